"""bdh_kernels.nn.LIF: multi-step and single-step forms, state handling, and a small network that learns."""
import pytest
import torch
from torch import nn

import bdh_kernels
from bdh_kernels import backends
from bdh_kernels.nn import LIF, reset

BACKEND = "cpp" if backends.extension_error() is None else "reference"


def test_single_step_streaming_equals_one_multi_step_call():
    x = (torch.randn(20, 3, 7) * 2).requires_grad_(True)
    multi = LIF(tau_syn=3.0, v_reset=None, backend=BACKEND)
    single = LIF(tau_syn=3.0, v_reset=None, step_mode="s", backend=BACKEND)
    out_multi = multi(x)
    out_single = torch.stack([single(x_t) for x_t in x])
    assert torch.equal(out_multi, out_single)
    (g_multi,) = torch.autograd.grad(out_multi.square().sum(), x)
    (g_single,) = torch.autograd.grad(out_single.square().sum(), x)
    torch.testing.assert_close(g_multi, g_single, rtol=1e-5, atol=1e-6)


def test_multi_step_is_stateless_unless_asked():
    x = torch.full((5, 4), 1.2)  # h: 0.6, 0.9, 1.05 (fires), 0.6, 0.9
    layer = LIF(backend=BACKEND)
    assert torch.equal(layer(x), layer(x)) and layer.v is None
    stateful = LIF(stateful=True, backend=BACKEND)
    first = stateful(x)
    second = stateful(x)  # starts from v = 0.9: fires at the first step
    assert first[:, 0].tolist() == [0, 0, 1, 0, 0] and second[:, 0].tolist() == [1, 0, 0, 1, 0]
    reset(nn.Sequential(stateful))
    assert stateful.v is None and torch.equal(stateful(x), first)


def test_single_step_state_must_fit_the_next_input():
    layer = LIF(step_mode="s", backend=BACKEND)
    layer(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"carries a state of shape \(3, 4\).*\(5, 4\): call reset\(\)"):
        layer(torch.randn(5, 4))
    layer.reset()
    layer(torch.randn(5, 4))
    stateful = LIF(stateful=True, time_dim=1, backend=BACKEND)
    stateful(torch.randn(2, 6, 4))
    with pytest.raises(ValueError, match=r"carries a state of shape \(2, 4\).*\(3, 4\)"):
        stateful(torch.randn(3, 6, 4))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"step_mode": "x"}, ValueError, "step_mode"),
    ({"tau_mem": 0.5}, ValueError, "tau_mem must be > 1"),
    ({"surrogate": "nope"}, ValueError, "surrogate must be one of"),
    ({"output": "voltage"}, ValueError, "output must be"),
    ({"stateful": 1}, TypeError, "stateful must be a bool"),
    ({"backend": "numba"}, ValueError, "backend must be one of"),
    ({"time_dim": "0"}, TypeError, "time_dim must be an int"),
])
def test_bad_parameters_fail_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        LIF(**kwargs)


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_input_that_is_no_tensor_is_a_type_error(step_mode):
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got float"):
        LIF(step_mode=step_mode)(1.0)


def test_lif_replaces_an_activation_and_the_network_learns():
    """A two-layer spiking MLP on a rate-coded toy task: the loss falls within a few dozen steps."""
    torch.manual_seed(0)
    t, b, d_in, d_hidden = 16, 64, 20, 64
    model = nn.Sequential(nn.Linear(d_in, d_hidden), LIF(tau_mem=2.0, surrogate="atan", backend=BACKEND),
                          nn.Linear(d_hidden, 2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    centers = torch.randn(2, d_in)
    losses = []
    for _ in range(40):
        labels = torch.randint(0, 2, (b,))
        x = centers[labels] + 0.5 * torch.randn(b, d_in)
        x_seq = x.expand(t, b, d_in)  # constant current over T steps
        logits = model(x_seq).mean(0)
        loss = nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


def test_repr_names_the_parameters():
    assert "tau_mem=2.0" in repr(LIF()) and "step_mode='m'" in repr(LIF())
    assert isinstance(bdh_kernels.nn.LIF(), nn.Module)
