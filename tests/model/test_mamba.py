"""The pure-PyTorch selective scan against a plain step-by-step recurrence, and mamba_ssm compatibility."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.mamba import Mamba, selective_scan


def reference_scan(u, delta, A, B, C, D, z, delta_bias):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t ; y_t = C_t . h_t + D u_t ; y *= silu(z), one step at a time."""
    b, d, length = u.shape
    n = A.shape[1]
    ys = torch.zeros(b, d, length, dtype=torch.float64)
    for i in range(b):
        for ch in range(d):
            h = torch.zeros(n, dtype=torch.float64)
            for t in range(length):
                dt = F.softplus(delta[i, ch, t] + delta_bias[ch])
                h = torch.exp(dt * A[ch]) * h + dt * B[i, :, t] * u[i, ch, t]
                y = (C[i, :, t] * h).sum() + D[ch] * u[i, ch, t]
                ys[i, ch, t] = y * F.silu(z[i, ch, t])
    return ys


@pytest.mark.parametrize("length,chunk", [(1, 16), (7, 4), (33, 16), (40, 8), (100, 32), (64, 64)])
def test_selective_scan_matches_step_by_step(length, chunk):
    g = torch.Generator().manual_seed(length)
    b, d, n = 2, 5, 4
    u = torch.randn(b, d, length, generator=g, dtype=torch.float64)
    delta = torch.randn(b, d, length, generator=g, dtype=torch.float64)
    A = -torch.rand(d, n, generator=g, dtype=torch.float64) * 4  # strongly decaying and slow channels
    B = torch.randn(b, n, length, generator=g, dtype=torch.float64)
    C = torch.randn(b, n, length, generator=g, dtype=torch.float64)
    D = torch.randn(d, generator=g, dtype=torch.float64)
    z = torch.randn(b, d, length, generator=g, dtype=torch.float64)
    bias = torch.randn(d, generator=g, dtype=torch.float64)
    expected = reference_scan(u, delta, A, B, C, D, z, bias)
    got = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True, chunk=chunk)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-4)


def test_parameter_names_and_shapes_match_mamba_ssm():
    # mamba_ssm.Mamba(d_model=64, d_state=16, d_conv=4, expand=2): d_inner=128, dt_rank=ceil(64/16)=4.
    m = Mamba(64, d_state=16, d_conv=4, expand=2)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (256, 64),
        "conv1d.weight": (128, 1, 4),
        "conv1d.bias": (128,),
        "x_proj.weight": (4 + 32, 128),
        "dt_proj.weight": (128, 4),
        "dt_proj.bias": (128,),
        "A_log": (128, 16),
        "D": (128,),
        "out_proj.weight": (64, 128),
    }
    # S4D-real initialisation: A = -[1..N] per channel; dt = softplus(bias) within [dt_min, dt_max].
    torch.testing.assert_close(-torch.exp(m.A_log[0]), -torch.arange(1, 17, dtype=torch.float32))
    dt = F.softplus(m.dt_proj.bias.detach())
    assert float(dt.min()) >= 1e-4 and float(dt.max()) <= 0.1 + 1e-6


def test_mamba_is_causal():
    m = Mamba(16, d_state=4).eval()
    x = torch.randn(1, 12, 16)
    y = m(x)
    x2 = x.clone()
    x2[:, 8:] += torch.randn(1, 4, 16)
    y2 = m(x2)
    torch.testing.assert_close(y[:, :8], y2[:, :8])
    assert not torch.allclose(y[:, 8:], y2[:, 8:])


@pytest.mark.parametrize("length", [3, 16, 19])  # one level; whole chunks; chunks and a tail
def test_linear_recurrence_gradients(length):
    from model.mamba import linear_recurrence_

    g = torch.Generator().manual_seed(3)
    a = torch.rand(length, 2, 3, generator=g, dtype=torch.float64).requires_grad_()  # time-major
    x = torch.randn(length, 2, 3, generator=g, dtype=torch.float64).requires_grad_()
    # x is written over: each call gets its own copy
    assert torch.autograd.gradcheck(lambda a, x: linear_recurrence_(a, x.clone(), 4), (a, x))


def test_selective_scan_gradients_match_the_reference():
    g = torch.Generator().manual_seed(4)
    b, d, n, length = 1, 3, 2, 9
    args = [torch.randn(b, d, length, generator=g, dtype=torch.float64),
            torch.randn(b, d, length, generator=g, dtype=torch.float64),
            -torch.rand(d, n, generator=g, dtype=torch.float64) * 2,
            torch.randn(b, n, length, generator=g, dtype=torch.float64),
            torch.randn(b, n, length, generator=g, dtype=torch.float64),
            torch.randn(d, generator=g, dtype=torch.float64),
            torch.randn(b, d, length, generator=g, dtype=torch.float64),
            torch.randn(d, generator=g, dtype=torch.float64)]
    ours = [t.clone().requires_grad_() for t in args]
    ref = [t.clone().requires_grad_() for t in args]
    u, delta, A, B, C, D, z, bias = ours
    selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, chunk=4).double().pow(2).sum().backward()
    reference_scan(*ref).pow(2).sum().backward()
    for mine, theirs in zip(ours, ref):
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("length,chunk", [(1, 4), (4, 4), (7, 4), (16, 4), (45, 4), (45, 16), (300, 8)])
@pytest.mark.parametrize("with_h0", [False, True])
def test_linear_scan_matches_one_step_at_a_time(length, chunk, with_h0):
    """The two-level scan (chunks side by side, end states chained one level up, a tail shorter
    than a chunk) and the incoming state equal the plain recurrence."""
    from model.mamba import linear_scan_

    g = torch.Generator().manual_seed(length)
    a = torch.rand(length, 2, 3, 4, generator=g, dtype=torch.float64)
    x = torch.randn(length, 2, 3, 4, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, 3, 4, generator=g, dtype=torch.float64) if with_h0 else None
    h = torch.zeros(2, 3, 4, dtype=torch.float64) if h0 is None else h0
    expected = []
    for t in range(length):
        h = a[t] * h + x[t]
        expected.append(h)
    torch.testing.assert_close(linear_scan_(a, x.clone(), h0, chunk), torch.stack(expected))


@pytest.mark.parametrize("d_inner,d_state", [(8, 4), (1024, 8)])  # the two-level and the streamed path
def test_inference_scan_equals_the_differentiable_one(d_inner, d_state):
    """Without autograd, wide layers scan in time chunks (_streamed_scan); the result equals the
    differentiable path that training uses."""
    from model.mamba import STREAM_MIN_STATES

    assert (d_inner * d_state >= STREAM_MIN_STATES) == (d_inner == 1024)
    g = torch.Generator().manual_seed(5)
    b, length = 2, 37
    u, delta, z = (torch.randn(b, d_inner, length, generator=g) for _ in range(3))
    A = -torch.rand(d_inner, d_state, generator=g) * 4
    B, C = (torch.randn(b, d_state, length, generator=g) for _ in range(2))
    D, bias = torch.randn(d_inner, generator=g), torch.randn(d_inner, generator=g)
    with torch.no_grad():
        fast = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, chunk=8)
    slow = selective_scan(u, delta, A.requires_grad_(), B, C, D, z=z, delta_bias=bias, chunk=8)
    torch.testing.assert_close(fast, slow.detach(), atol=1e-5, rtol=1e-5)


def test_causal_depthwise_conv_matches_conv1d():
    from model.mamba import causal_depthwise_conv_tm

    conv = torch.nn.Conv1d(6, 6, kernel_size=4, groups=6, padding=3)
    x = torch.randn(2, 6, 11)  # [b, d, l]
    expected = conv(x)[..., :11]
    got = causal_depthwise_conv_tm(x.permute(2, 0, 1), conv.weight, conv.bias)  # time-major in and out
    torch.testing.assert_close(got.permute(1, 2, 0), expected)


@pytest.mark.parametrize("d_model,d_state", [(8, 4), (512, 8)])  # two-level scan; streamed (1024 x 8 states)
def test_mamba_forward_equals_mamba_ssm_layout_step_by_step(d_model, d_state):
    """The time-major forward computes mamba_ssm's function: in_proj, causal depthwise conv in
    [b, d, l], x_proj / dt_proj, the recurrence one step at a time, out_proj."""
    torch.manual_seed(d_model)
    m = Mamba(d_model, d_state=d_state).eval()
    hidden = torch.randn(2, 9, d_model)
    with torch.no_grad():
        got = m(hidden)
        xz = m.in_proj(hidden).transpose(1, 2)
        x, z = xz.chunk(2, dim=1)
        x = F.silu(m.conv1d(x)[..., :9])
        dt, B, C = torch.split(m.x_proj(x.transpose(1, 2)), [m.dt_rank, d_state, d_state], dim=-1)
        dt = (dt @ m.dt_proj.weight.t()).transpose(1, 2)
        if d_model == 8:
            y = reference_scan(*(t.double() for t in (x, dt, -torch.exp(m.A_log), B.transpose(1, 2),
                                                      C.transpose(1, 2), m.D, z, m.dt_proj.bias)))
        else:  # too many channels for the Python loop: the float64 two-level scan stands in
            A = (-torch.exp(m.A_log)).double().requires_grad_()  # with autograd: not the streamed path
            with torch.enable_grad():
                y = selective_scan(*(t.double() for t in (x, dt)), A, *(t.double() for t in (
                    B.transpose(1, 2), C.transpose(1, 2), m.D)), z=z.double(),
                    delta_bias=m.dt_proj.bias.double(), chunk=4).detach()
        expected = m.out_proj(y.transpose(1, 2).float())
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
