"""Mamba (selective state-space) block in pure PyTorch, parameter-compatible with ``mamba_ssm.Mamba``.

Parameter names and shapes equal those of ``mamba_ssm.Mamba`` (v1): ``in_proj``, ``conv1d``,
``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``; a state_dict saved on one runs on the
other. On a CUDA device where ``mamba_ssm`` imports, the selective scan runs in its CUDA kernel;
everywhere else in :func:`selective_scan` below.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_CUDA_SCAN = None  # cached mamba_ssm.selective_scan_fn, False when unavailable


def _cuda_selective_scan():
    global _CUDA_SCAN
    if _CUDA_SCAN is None:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            _CUDA_SCAN = selective_scan_fn
        except Exception:  # ImportError, or a CUDA extension that fails to load
            _CUDA_SCAN = False
    return _CUDA_SCAN or None


def _scan_within(a: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scan along the last axis in place on copies: returns (decay since index 0, state from 0).

    One Python step per position, each on a strided slice covering 1/len of the tensor, so
    the whole scan moves each element about once (the cost is memory traffic, not FLOPs).
    """
    decay, state = a.clone(), x.clone()
    for j in range(1, x.shape[-1]):
        state[..., j].addcmul_(a[..., j], state[..., j - 1])
        decay[..., j].mul_(decay[..., j - 1])
    return decay, state


def _scan_chunks(a: torch.Tensor, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``h_t = a_t h_{t-1} + x_t`` along the last axis with ``h_{-1} = 0``; no autograd.

    Two levels: all chunks of ``chunk`` steps are scanned together (``chunk`` vectorised steps,
    products of decays only, so nothing overflows), the chunks' end states are chained by the
    same scan one level up, and each chunk then adds its decayed incoming state.
    """
    length = x.shape[-1]
    if length <= chunk:
        return _scan_within(a, x)[1]
    m = -(-length // chunk)
    pad = m * chunk - length
    if pad:
        # Padding with (a=1, x=0) steps leaves the state unchanged.
        a = F.pad(a, (0, pad), value=1.0)
        x = F.pad(x, (0, pad), value=0.0)
    ca, cx = _scan_within(a.unflatten(-1, (m, chunk)), x.unflatten(-1, (m, chunk)))
    ends = _scan_chunks(ca[..., -1], cx[..., -1], chunk)  # state at the end of each chunk
    incoming = torch.cat([torch.zeros_like(ends[..., :1]), ends[..., :-1]], dim=-1)
    H = cx.addcmul_(ca, incoming[..., None]).flatten(-2)
    return H[..., :length] if pad else H


class _LinearRecurrence(torch.autograd.Function):
    """``H = scan(a, x)`` with the analytic backward, itself a reverse linear recurrence:
    ``g_t = dL/dH_t + a_{t+1} g_{t+1}``, ``dL/dx_t = g_t``, ``dL/da_t = g_t H_{t-1}``.
    (Autograd through the scan's slices and concatenations costs ~100x the forward.)"""

    @staticmethod
    def forward(ctx, a: torch.Tensor, x: torch.Tensor, chunk: int) -> torch.Tensor:  # type: ignore[override]
        H = _scan_chunks(a, x, chunk)
        ctx.save_for_backward(a, H)
        ctx.chunk = chunk
        return H

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):  # type: ignore[override]
        a, H = ctx.saved_tensors
        zero = torch.zeros_like(a[..., :1])
        a_next = torch.cat([a[..., 1:], zero], dim=-1)
        g = _scan_chunks(a_next.flip(-1), grad_h.flip(-1), ctx.chunk).flip(-1)
        h_prev = torch.cat([zero, H[..., :-1]], dim=-1)
        return g * h_prev, g, None


def linear_recurrence(a: torch.Tensor, x: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """``h_t = a_t h_{t-1} + x_t`` along the last axis (``h_{-1} = 0``), differentiable."""
    return _LinearRecurrence.apply(a, x, chunk)


def _hillis_steele(a: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of the pairs ``(a, x)`` along the last axis under
    ``(a1, x1) o (a2, x2) = (a1 a2, a2 x1 + x2)`` in log2(len) out-of-place steps."""
    step, length = 1, x.shape[-1]
    while step < length:
        x = torch.cat([x[..., :step], torch.addcmul(x[..., step:], a[..., step:], x[..., :-step])], dim=-1)
        a = torch.cat([a[..., :step], a[..., step:] * a[..., :-step]], dim=-1)
        step *= 2
    return a, x


def traceable_recurrence(a: torch.Tensor, x: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """The same recurrence as :func:`linear_recurrence` in out-of-place ops only, with every
    shape taken from the inputs, so an ONNX trace stays valid for any batch size (the eager
    scan's in-place slice updates do not trace cleanly). Same two levels: Hillis-Steele inside
    chunks, then the chunk end states chained one level up. Used for export."""
    length = x.shape[-1]
    if length <= chunk:
        return _hillis_steele(a, x)[1]
    m = -(-length // chunk)
    pad = m * chunk - length
    a = F.pad(a, (0, pad), value=1.0)  # (a=1, x=0) steps leave the state unchanged
    x = F.pad(x, (0, pad), value=0.0)
    # reshape with sizes read from the tensor (traced), not unflatten (sizes baked into the graph)
    shape = (*x.shape[:-1], m, chunk)
    ca, cx = _hillis_steele(a.reshape(shape), x.reshape(shape))
    ends = traceable_recurrence(ca[..., -1], cx[..., -1], chunk)
    incoming = torch.cat([torch.zeros_like(ends[..., :1]), ends[..., :-1]], dim=-1)
    return torch.addcmul(cx, ca, incoming[..., None]).flatten(-2)[..., :length]


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    chunk: int = 8,
) -> torch.Tensor:
    """Selective scan with ``mamba_ssm.selective_scan_fn``'s signature and semantics.

    Shapes: ``u, delta, z: [b, d, l]``, ``A: [d, n]``, ``B, C: [b, n, l]``, ``D, delta_bias: [d]``.
    Recurrence (per channel ``d`` and state ``n``)::

        dt_t = softplus(delta_t + delta_bias)
        h_t  = a_t * h_{t-1} + x_t,   a_t = exp(dt_t * A),   x_t = dt_t * B_t * u_t
        y_t  = <C_t, h_t> + D * u_t ;  y_t *= silu(z_t)

    The recurrence runs in :func:`linear_recurrence` (chunked parallel scan, analytic
    backward). All arithmetic is float32. Returns ``y: [b, d, l]`` in ``u``'s dtype.
    """
    dtype = u.dtype
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    log_a = delta[:, :, None, :] * A[None, :, :, None]  # [b, d, n, l], <= 0
    x = (delta * u)[:, :, None, :] * B[:, None, :, :]  # [b, d, n, l]
    if torch.onnx.is_in_onnx_export():
        H = traceable_recurrence(log_a.exp(), x, chunk)
    else:
        H = linear_recurrence(log_a.exp(), x, chunk)
    y = torch.einsum("bdnl,bnl->bdl", H, C)
    if D is not None:
        y = y + D.float()[None, :, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


class Mamba(nn.Module):
    """One Mamba mixer: ``[b, l, d_model] -> [b, l, d_model]`` (Gu & Dao, 2023)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan_chunk: int = 8,
        use_cuda_kernels: bool = True,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_chunk = scan_chunk
        self.use_cuda_kernels = use_cuda_kernels
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """mamba_ssm's initialisation of the SSM-specific parameters (S4D-real A, log-uniform dt)."""
        if self.A_log.is_meta:
            return
        dt_min, dt_max, floor = self._dt_range
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        length = hidden.shape[1]
        xz = self.in_proj(hidden).transpose(1, 2)  # [b, 2*d_inner, l]
        x, z = xz.chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :length])
        x_dbl = self.x_proj(x.transpose(1, 2))  # [b, l, r + 2n]
        dt, Bm, Cm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # [b, d_inner, l]; bias goes in the scan
        Bm = Bm.transpose(1, 2).contiguous()
        Cm = Cm.transpose(1, 2).contiguous()
        A = -torch.exp(self.A_log.float())
        scan = _cuda_selective_scan() if (self.use_cuda_kernels and x.is_cuda) else None
        if scan is not None:
            y = scan(x.contiguous(), dt.contiguous(), A, Bm, Cm, self.D.float(), z=z.contiguous(),
                     delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        else:
            y = selective_scan(x, dt, A, Bm, Cm, self.D, z=z, delta_bias=self.dt_proj.bias,
                               delta_softplus=True, chunk=self.scan_chunk)
        return self.out_proj(y.transpose(1, 2).to(hidden.dtype))
