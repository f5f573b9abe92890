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


def test_linear_recurrence_gradients():
    from model.mamba import linear_recurrence

    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 3, 19, generator=g, dtype=torch.float64).requires_grad_()
    x = torch.randn(2, 3, 19, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, x: linear_recurrence(a, x, 4), (a, x))


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


@pytest.mark.parametrize("length", [1, 7, 16, 45, 300])
def test_traceable_recurrence_used_for_export_matches_the_scan(length):
    from model.mamba import linear_recurrence, traceable_recurrence

    g = torch.Generator().manual_seed(length)
    a = torch.rand(2, 3, 4, length, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, 4, length, generator=g, dtype=torch.float64)
    torch.testing.assert_close(traceable_recurrence(a, x, chunk=16), linear_recurrence(a, x, 8))
