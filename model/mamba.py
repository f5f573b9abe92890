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
# Layers with at least this many states per token (d_inner * d_state) scan without autograd in
# time chunks (_streamed_scan): each step's slab is then large enough that running steps one by
# one costs little beyond the arithmetic. Narrower layers (tiny, small) use the two-level scan.
STREAM_MIN_STATES = 8192
STREAM_CHUNK = 64  # time steps per chunk of _streamed_scan (speed only; 16-64 measured alike)


def _cuda_selective_scan():
    global _CUDA_SCAN
    if _CUDA_SCAN is None:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            _CUDA_SCAN = selective_scan_fn
        except Exception:  # ImportError, or a CUDA extension that fails to load
            _CUDA_SCAN = False
    return _CUDA_SCAN or None


def _steps_(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """``h_t = a_t h_{t-1} + x_t`` one step at a time along the leading axis, written over ``x``;
    out of place while tracing for export (a trace cannot hold in-place slab updates)."""
    if torch.jit.is_tracing():
        # One Split of each input and one Concat of the states (in ONNX), each step a Mul and an
        # Add on [1, ...] pieces: indexing every step instead costs two Gathers and an
        # Unsqueeze per step, a third of the exported scan's time.
        xs, as_ = x.split(1, dim=0), a.split(1, dim=0)
        h = xs[0] if h0 is None else torch.addcmul(xs[0], as_[0], h0)
        states = [h]
        for a_t, x_t in zip(as_[1:], xs[1:]):
            h = torch.addcmul(x_t, a_t, h)
            states.append(h)
        return torch.cat(states)
    xs, as_ = x.unbind(0), a.unbind(0)  # views; one call each instead of three per step
    if h0 is not None:
        xs[0].addcmul_(as_[0], h0)
    for t in range(1, len(xs)):
        xs[t].addcmul_(as_[t], xs[t - 1])
    return x


def linear_scan_(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor | None = None, chunk: int = 8) -> torch.Tensor:
    """``h_t = a_t h_{t-1} + x_t`` along the leading (time) axis from ``h_{-1} = h0`` (default 0),
    written over ``x`` (returned; a new tensor while tracing); no autograd of its own.

    ``a, x: [l, ...]``, ``h0: [...]``. Time-major, so each step is one multiply-add on a
    contiguous slab next to the one just written. (Scanning the last axis instead touches one
    float per cache line per step: a vit-b-16 tracklet's scans took 4-5x longer that way.) Up to
    ``chunk`` steps run one by one; a longer axis runs in two levels, so a scan costs about
    ``3 * chunk`` tensor operations whatever its length: the chunks' end states from zero (all
    chunks side by side) and their total decays, the end states chained by this same scan one
    level up, then every chunk scanned again from its true incoming state. Sizes are read from
    the tensors, so the export's trace keeps a dynamic batch.
    """
    length = x.shape[0]
    if length <= chunk:
        return _steps_(a, x, h0)
    m = length // chunk
    head = m * chunk
    A = a[:head].reshape(m, chunk, *a.shape[1:])
    X = x[:head].reshape(m, chunk, *x.shape[1:])
    ends = X[:, 0]
    for j in range(1, chunk):
        ends = torch.addcmul(X[:, j], A[:, j], ends)
    ends = linear_scan_(A.prod(dim=1), ends, h0, chunk)  # state at the end of each chunk
    first = torch.zeros_like(ends[:1]) if h0 is None else h0[None]
    incoming = torch.cat([first, ends[:-1]])  # [m, ...]: state entering each chunk
    # Every chunk again from its incoming state, all chunks side by side: step j updates the
    # slabs X[:, j] (a transposed view, so in eager mode this writes over x itself).
    H = _steps_(A.transpose(0, 1), X.transpose(0, 1), incoming)
    if not torch.jit.is_tracing():
        if head < length:
            linear_scan_(a[head:], x[head:], x[head - 1], chunk)
        return x
    H = H.transpose(0, 1).reshape(head, *x.shape[1:])
    return H if head == length else torch.cat([H, linear_scan_(a[head:], x[head:], H[-1], chunk)])


class _LinearRecurrence(torch.autograd.Function):
    """``H = linear_scan_(a, x)`` (written over ``x``) with the analytic backward, itself a
    reverse linear recurrence: ``g_t = dL/dH_t + a_{t+1} g_{t+1}``, ``dL/dx_t = g_t``,
    ``dL/da_t = g_t H_{t-1}``. (Autograd through the scan's slices costs ~100x the forward.)"""

    @staticmethod
    def forward(ctx, a: torch.Tensor, x: torch.Tensor, chunk: int) -> torch.Tensor:  # type: ignore[override]
        H = linear_scan_(a, x, chunk=chunk)
        ctx.mark_dirty(x)
        ctx.save_for_backward(a, H)
        ctx.chunk = chunk
        return H

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):  # type: ignore[override]
        a, H = ctx.saved_tensors
        zero = torch.zeros_like(a[:1])
        a_next = torch.cat([a[1:], zero])
        g = linear_scan_(a_next.flip(0), grad_h.flip(0), chunk=ctx.chunk).flip(0)
        return g * torch.cat([zero, H[:-1]]), g, None


def linear_recurrence_(a: torch.Tensor, x: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """:func:`linear_scan_` from ``h_{-1} = 0``, written over ``x`` (which nothing else may
    need) and differentiable. ``a, x: [l, ...]``."""
    return _LinearRecurrence.apply(a, x, chunk)


def _discretise(dt: torch.Tensor, dtu: torch.Tensor, At: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a = exp(dt A)``, ``x = dt u B`` (zero-order hold, Mamba's simplified B).

    ``dt, dtu: [s, b, d]`` (``dtu = dt * u``), ``At: [n, d]`` (``A`` transposed, contiguous),
    ``B: [s, b, n]`` -> ``a, x: [s, b, n, d]``, built directly time-major from the small inputs.
    Channels innermost: the broadcasts then run along rows of ``d`` contiguous values rather
    than of ``n`` (16), which makes building and reading the states about 1.5x faster."""
    return (dt[:, :, None, :] * At).exp_(), dtu[:, :, None, :] * B[..., None]


def _read_out(H: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """``y_t = <C_t, h_t>``: ``H: [s, b, n, d]``, ``C: [s, b, n]`` -> ``[s, b, d]``, as one
    batched ``[s*b, 1, n] @ [s*b, n, d]``."""
    s, b, n, d = H.shape
    return torch.bmm(C.reshape(s * b, 1, n), H.reshape(s * b, n, d)).view(s, b, d)


def _streamed_scan(dt: torch.Tensor, dtu: torch.Tensor, At: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor) -> torch.Tensor:
    """The scan without autograd, :data:`STREAM_CHUNK` time steps at a time: ``dt, dtu: [l, b, d]``,
    ``At: [n, d]``, ``B, C: [l, b, n]`` -> ``y: [l, b, d]``.

    Only one chunk's ``[chunk, 1, n, d]`` states exist at a time, so they reuse the allocator's
    memory: for a wide layer (vit-b-16: 1536 x 16 states per token) materialising all ``l``
    steps at once costs more in page faults of fresh 100 MB buffers than in arithmetic. In eager
    mode on the CPU each sequence of the batch is scanned on its own: a step then updates fewer
    states than torch splits across threads, and waking the idle OpenMP threads (``OMP_WAIT_POLICY=
    PASSIVE``, as the service runs) for every step cost more than the step itself. A trace keeps
    the batch whole (its size is dynamic in the exported graph), and so does a GPU (where the
    split would only multiply kernel launches).
    """
    if dt.shape[1] > 1 and dt.device.type == "cpu" and not torch.jit.is_tracing():
        return torch.cat([_streamed_scan(dt[:, i:i + 1], dtu[:, i:i + 1], At, B[:, i:i + 1], C[:, i:i + 1])
                          for i in range(dt.shape[1])], dim=1)
    ys, h = [], None
    for s in range(0, dt.shape[0], STREAM_CHUNK):
        a, x = _discretise(dt[s:s + STREAM_CHUNK], dtu[s:s + STREAM_CHUNK], At, B[s:s + STREAM_CHUNK])
        H = _steps_(a, x, h)
        h = H[-1]
        ys.append(_read_out(H, C[s:s + STREAM_CHUNK]))
    return ys[0] if len(ys) == 1 else torch.cat(ys, dim=0)


def selective_scan_tm(
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
    """:func:`selective_scan` on time-major tensors: ``u, delta, z: [l, b, d]``, ``A: [d, n]``,
    ``B, C: [l, b, n]``, ``D, delta_bias: [d]`` -> ``y: [l, b, d]`` in ``u``'s dtype.

    The recurrence runs in :func:`linear_scan_` (``chunk``: its chunk length, speed only); with
    autograd through :func:`linear_recurrence_` (analytic backward), and for wide layers at
    inference in :func:`_streamed_scan`. All arithmetic is float32.
    """
    dtype = u.dtype
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float()
    if delta_softplus:
        # The same function, exported as element-wise Relu/Abs/Exp/Log nodes: ONNX Runtime's
        # Softplus kernel took ~6x torch's time (70 ms of a vit-b-16 tracklet).
        delta = (F.relu(delta) + torch.log1p(torch.exp(-delta.abs()))) if torch.jit.is_tracing() else F.softplus(delta)
    # The ONNX trace runs with parameters that require grad; the graph has no autograd.
    differentiable = (torch.is_grad_enabled() and not torch.onnx.is_in_onnx_export()
                      and any(t.requires_grad for t in (delta, u, A, B, C)))
    At = A.t().contiguous()
    if differentiable or A.numel() < STREAM_MIN_STATES:
        a, x = _discretise(delta, delta * u, At, B)
        y = _read_out(linear_recurrence_(a, x, chunk) if differentiable else linear_scan_(a, x, chunk=chunk), C)
    else:
        y = _streamed_scan(delta, delta * u, At, B, C)
    if D is not None:
        y = y + D.float() * u
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


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

    Computed time-major by :func:`selective_scan_tm`. Returns ``y: [b, d, l]`` in ``u``'s dtype.
    """
    def tm(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.permute(2, 0, 1).contiguous()

    y = selective_scan_tm(tm(u), tm(delta), A, tm(B), tm(C), D, tm(z), delta_bias, delta_softplus, chunk)
    return y.permute(1, 2, 0)


def causal_depthwise_conv_tm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Mamba's causal depthwise ``conv1d`` on time-major input: ``x: [l, b, d]``, ``weight:
    [d, 1, K]``, ``bias: [d]`` -> ``[l, b, d]`` with ``y_t = bias + sum_k w_k x_{t-K+1+k}``
    (``x`` zero before the start); equal to ``conv1d(x, padding=K-1)[..., :l]`` in ``[b, d, l]``."""
    k = weight.shape[-1]
    length = x.shape[0]
    w = weight[:, 0, :].t()  # [K, d]
    xp = F.pad(x, (0, 0, 0, 0, k - 1, 0))
    y = xp[k - 1:k - 1 + length] * w[k - 1]
    for j in range(k - 1):
        y = torch.addcmul(y, xp[j:j + length], w[j])
    return y if bias is None else y + bias


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
        if self.use_cuda_kernels and hidden.is_cuda and _cuda_selective_scan() is not None:
            return self._forward_cuda(hidden)
        return self._forward_time_major(hidden)

    def _forward_cuda(self, hidden: torch.Tensor) -> torch.Tensor:
        """mamba_ssm's [b, d, l] layout and its CUDA selective-scan kernel."""
        length = hidden.shape[1]
        xz = self.in_proj(hidden).transpose(1, 2)  # [b, 2*d_inner, l]
        x, z = xz.chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :length])
        x_dbl = self.x_proj(x.transpose(1, 2))  # [b, l, r + 2n]
        dt, Bm, Cm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # [b, d_inner, l]; bias goes in the scan
        A = -torch.exp(self.A_log.float())
        y = _cuda_selective_scan()(x.contiguous(), dt.contiguous(), A, Bm.transpose(1, 2).contiguous(),
                                   Cm.transpose(1, 2).contiguous(), self.D.float(), z=z.contiguous(),
                                   delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2).to(hidden.dtype))

    def _forward_time_major(self, hidden: torch.Tensor) -> torch.Tensor:
        """The same function in [l, b, d] layout end to end (the pure-PyTorch scan's own), so no
        big tensor is transposed: the projections produce time-major rows directly."""
        xz = self.in_proj(hidden.transpose(0, 1))  # [l, b, 2*d_inner]
        x, z = xz.chunk(2, dim=-1)
        x = F.silu(causal_depthwise_conv_tm(x, self.conv1d.weight, self.conv1d.bias))
        dt, Bm, Cm = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = dt @ self.dt_proj.weight.t()  # [l, b, d_inner]; bias goes in the scan
        A = -torch.exp(self.A_log.float())
        y = selective_scan_tm(x, dt, A, Bm, Cm, self.D, z=z, delta_bias=self.dt_proj.bias,
                              delta_softplus=True, chunk=self.scan_chunk)
        return self.out_proj(y.to(hidden.dtype)).transpose(0, 1)
