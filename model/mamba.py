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
    chunk: int = 32,
) -> torch.Tensor:
    """Selective scan with ``mamba_ssm.selective_scan_fn``'s signature and semantics.

    Shapes: ``u, delta, z: [b, d, l]``, ``A: [d, n]``, ``B, C: [b, n, l]``, ``D, delta_bias: [d]``.
    Recurrence (per channel ``d`` and state ``n``)::

        dt_t = softplus(delta_t + delta_bias)
        h_t  = a_t * h_{t-1} + x_t,   a_t = exp(dt_t * A),   x_t = dt_t * B_t * u_t
        y_t  = <C_t, h_t> + D * u_t ;  y_t *= silu(z_t)

    The linear recurrence is solved chunk by chunk with a Hillis-Steele scan over the pairs
    ``(a, x)`` under ``(a1, x1) o (a2, x2) = (a1 a2, a2 x1 + x2)``: log2(chunk) vectorised steps
    per chunk instead of one Python step per token, and only products of decays in (0, 1], so
    nothing overflows. The state is carried across chunks. All arithmetic is float32.
    Returns ``y: [b, d, l]`` in ``u``'s dtype.
    """
    dtype = u.dtype
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, length = u.shape
    h = u.new_zeros(b, d, A.shape[1])
    du = delta * u
    ys = []
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        a = torch.exp(delta[:, :, None, start:stop] * A[None, :, :, None])  # [b, d, n, c]
        x = du[:, :, None, start:stop] * B[:, None, :, start:stop]  # [b, d, n, c]
        step = 1
        while step < stop - start:
            x = torch.cat([x[..., :step], torch.addcmul(x[..., step:], a[..., step:], x[..., :-step])], dim=-1)
            a = torch.cat([a[..., :step], a[..., step:] * a[..., :-step]], dim=-1)
            step *= 2
        H = torch.addcmul(x, a, h[..., None])  # a now holds the decay from the chunk start
        ys.append(torch.einsum("bdnl,bnl->bdl", H, C[:, :, start:stop]))
        h = H[..., -1]
    y = torch.cat(ys, dim=-1)
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
        scan_chunk: int = 32,
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
