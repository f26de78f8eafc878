"""bdh_kernels.nn.STDPLearner: recording by hooks, dW in one call, in-place updates, state, Conv2d (im2col)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bdh_kernels
from bdh_kernels.nn import LIF, STDPLearner


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def poisson(shape, p, seed):
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p).float()


# --------------------------------------------------------------------------------------- learning
N_PATTERN, N_IN, N_OUT, PERIOD = 4, 16, 3, 10


def pattern_sequence(t, b, seed):
    """Inputs 0..3 fire together on two consecutive steps every PERIOD steps (the repeated pattern that
    makes the layer's neurons fire on the second step); inputs 4..15 fire at random (p = 0.1)."""
    x = poisson((t, b, N_IN), 0.1, seed)
    x[:, :, :N_PATTERN] = 0.0
    for start in range(0, t - 1, PERIOD):
        x[start:start + 2, :, :N_PATTERN] = 1.0
    return x


def _pattern_layer():
    linear = nn.Linear(N_IN, N_OUT, bias=False)
    with torch.no_grad():
        linear.weight.fill_(0.1)
        linear.weight[:, :N_PATTERN] = 0.4  # 4 x 0.4 = 1.6 on two steps: h = 0.8, then 1.2 -> a spike
    lif = LIF(tau_mem=2.0, v_threshold=1.0)
    return linear, lif, nn.Sequential(linear, lif)


def _train(model, learner, iterations=20, lr=0.05):
    fired = 0.0
    for it in range(iterations):
        fired += model(pattern_sequence(60, 8, seed=it)).sum().item()
        learner.step(lr=lr)
    return fired


def test_repeated_pattern_potentiates_coactive_pairs_and_depresses_the_rest():
    """The pattern inputs fire one step before the neurons (pre before post: potentiation outweighs the
    depression of their simultaneous step); the random inputs are uncorrelated with the neurons, so with
    a_minus > a_plus their weights shrink."""
    linear, lif, model = _pattern_layer()
    learner = STDPLearner(linear, lif, tau_pre=2.0, tau_post=2.0, a_plus=0.01, a_minus=0.012)
    w0 = linear.weight.detach().clone()
    assert _train(model, learner) > 0
    change = linear.weight.detach() - w0
    assert (change[:, :N_PATTERN] > 0).all(), change[:, :N_PATTERN]
    assert (change[:, N_PATTERN:] < 0).all(), change[:, N_PATTERN:]
    assert linear.weight.grad is None  # updated in place, outside autograd


def test_repeated_pattern_with_soft_bounds():
    """Soft bounds keep the weights in [w_min, w_max] where unbounded STDP drives the uncorrelated weights
    below w_min; those weights settle near the balance a_plus (w_max - w) = a_minus (w - w_min), i.e.
    w = (a_plus w_max + a_minus w_min) / (a_plus + a_minus)."""
    a_plus, a_minus, w_min, w_max = 0.01, 0.012, 0.0, 1.0
    final = {}
    for bounds in ({}, dict(w_min=w_min, w_max=w_max)):
        linear, lif, model = _pattern_layer()
        learner = STDPLearner(linear, lif, tau_pre=2.0, tau_post=2.0, a_plus=a_plus, a_minus=a_minus, **bounds)
        assert _train(model, learner, iterations=40, lr=0.2) > 0
        final[bool(bounds)] = linear.weight.detach()
    assert final[False][:, N_PATTERN:].min() < w_min
    assert final[True].min() >= w_min and final[True].max() <= w_max
    balance = (a_plus * w_max + a_minus * w_min) / (a_plus + a_minus)
    assert (final[True][:, N_PATTERN:] - balance).abs().max() < 0.05


# ----------------------------------------------------------------------------------- the contract
def _layer(n_in=12, n_out=5, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(n_in, n_out)
    with torch.no_grad():
        linear.weight.uniform_(0.0, 0.6)
    lif = LIF(tau_mem=2.0, v_threshold=0.5)
    return linear, lif, nn.Sequential(linear, lif)


def test_dw_is_stdp_update_of_the_recorded_spikes_and_traces_carry_across_forwards():
    linear, lif, model = _layer()
    learner = STDPLearner(linear, lif, tau_pre=3.0, tau_post=5.0, a_plus=0.2, a_minus=0.1)
    x1, x2 = poisson((20, 4, 12), 0.3, 1), poisson((15, 4, 12), 0.3, 2)
    y1, y2 = model(x1), model(x2)
    dw = learner.compute()
    expected, state = bdh_kernels.stdp_update(torch.cat([x1, x2]), torch.cat([y1, y2]), 3.0, 5.0, 0.2, 0.1)
    assert y1.sum() > 0 and rel_err(dw, expected) <= 1e-5
    assert torch.equal(learner.state.pre, state.pre) and torch.equal(learner.state.post, state.post)
    assert torch.equal(learner.delta_w, dw)
    assert learner.compute() is None  # recordings consumed


def test_step_and_apply_update_the_weight_in_place():
    linear, lif, model = _layer()
    learner = STDPLearner(linear, lif, tau_pre=3.0, tau_post=3.0, a_plus=0.2, a_minus=0.1, w_min=0.0, w_max=1.0)
    weight, w0 = linear.weight, linear.weight.detach().clone()
    x = poisson((20, 4, 12), 0.3, 3)
    y = model(x)
    expected, _ = bdh_kernels.stdp_update(x, y, 3.0, 3.0, 0.2, 0.1, weight=w0, w_min=0.0, w_max=1.0)
    dw = learner.step(lr=0.5)
    assert linear.weight is weight and weight.requires_grad
    torch.testing.assert_close(weight.detach(), w0 + 0.5 * expected)
    torch.testing.assert_close(dw, expected)
    # accumulate over two sequences, then apply once
    learner.reset()
    w1 = weight.detach().clone()
    d1 = (model(x), learner.compute())[1]
    d2 = (model(x), learner.compute())[1]
    assert torch.equal(weight.detach(), w1)  # compute() never writes
    applied = learner.apply_delta(lr=2.0)
    torch.testing.assert_close(applied, d1 + d2)
    torch.testing.assert_close(weight.detach(), w1 + 2.0 * (d1 + d2))
    assert learner.apply_delta() is None and learner.delta_w is None


def test_a_model_holding_a_learner_keeps_module_apply():
    linear, lif, model = _layer()
    model.learner = STDPLearner(linear, lif)  # as a submodule: nn.Module.apply must still be PyTorch's
    model.apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Linear) else None)
    assert torch.count_nonzero(linear.weight) == 0


def test_single_step_mode_equals_multi_step():
    linear, lif, _ = _layer()
    x = poisson((25, 3, 12), 0.3, 4)
    post = lif(linear(x)).detach()
    lif_s = LIF(tau_mem=2.0, v_threshold=0.5, step_mode="s")
    learner = STDPLearner(linear, lif_s, tau_pre=4.0, tau_post=4.0, a_plus=0.1, a_minus=0.1, step_mode="s")
    for x_t in x:
        lif_s(linear(x_t))
    dw = learner.compute()
    expected, _ = bdh_kernels.stdp_update(x, post, 4.0, 4.0, 0.1, 0.1)
    assert rel_err(dw, expected) <= 1e-5  # fp32 GEMMs over other row blocks: another summation order


def test_a_batch_of_another_shape_needs_a_reset():
    linear, lif, model = _layer()
    learner = STDPLearner(linear, lif)
    model(poisson((10, 2, 12), 0.3, 5))
    learner.compute()
    model(poisson((10, 3, 12), 0.3, 6))
    with pytest.raises(ValueError, match=r"carries pre traces of shape \(2, 12\).*\(3, 12\): call reset\(\)"):
        learner.compute()
    learner.reset()
    model(poisson((10, 3, 12), 0.3, 6))
    assert learner.compute() is not None


def test_reset_disable_close():
    linear, lif, model = _layer()
    learner = STDPLearner(linear, lif)
    x = poisson((10, 2, 12), 0.3, 5)
    model(x)
    learner.compute()
    assert learner.state is not None and learner.delta_w is not None
    learner.reset()
    assert learner.state is None and learner.delta_w is None and learner.compute() is None
    learner.disable()
    model(x)
    assert learner.compute() is None
    learner.enable()
    model(x)
    assert learner.compute() is not None
    learner.close()
    model(x)
    assert learner.compute() is None


def test_learner_does_not_own_the_layer():
    linear, lif, model = _layer()
    learner = STDPLearner(linear, lif)
    assert list(learner.parameters()) == [] and learner.state_dict() == {}
    model.learner = learner
    assert len(model.state_dict()) == 2  # weight and bias, once
    assert "Linear -> LIF" in repr(learner)


def test_bad_construction_and_mismatched_recordings():
    linear, lif, model = _layer()
    with pytest.raises(TypeError, match="linear must be an nn.Linear or nn.Conv2d"):
        STDPLearner(nn.Conv1d(3, 4, 3), lif)
    with pytest.raises(ValueError, match="groups=1"):
        STDPLearner(nn.Conv2d(4, 4, 3, groups=2), lif)
    with pytest.raises(TypeError, match="lif must be the nn.Module"):
        STDPLearner(linear, torch.relu)
    with pytest.raises(ValueError, match="tau_pre must be >= 1"):
        STDPLearner(linear, lif, tau_pre=0.0)
    with pytest.raises(ValueError, match="a_minus must be finite"):
        STDPLearner(linear, lif, a_minus=float("nan"))
    with pytest.raises(ValueError, match="both w_min and w_max"):
        STDPLearner(linear, lif, w_min=0.0)
    with pytest.raises(ValueError, match="w_min must be < w_max"):
        STDPLearner(linear, lif, w_min=1.0, w_max=0.0)
    with pytest.raises(ValueError, match="step_mode"):
        STDPLearner(linear, lif, step_mode="x")
    with pytest.raises(ValueError, match="backend must be one of"):
        STDPLearner(linear, lif, backend="nope")
    with pytest.raises(TypeError, match="time_dim must be an int"):
        STDPLearner(linear, lif, time_dim="x")
    other = LIF()
    learner = STDPLearner(linear, other)
    model(poisson((5, 2, 12), 0.3, 6))
    with pytest.raises(RuntimeError, match="recorded 1 inputs of the synapse but 0 outputs"):
        learner.compute()
    learner.reset()
    other(torch.randn(5, 2, 7))
    linear(torch.randn(5, 2, 12))
    with pytest.raises(ValueError, match="is lif the neuron after linear"):
        learner.compute()


# ------------------------------------------------------------------------------------------- Conv2d
class MultiStepConv2d(nn.Conv2d):
    """A conv that takes [T, B, C, H, W] itself (as SpikingJelly's multi-step layer.Conv2d does)."""

    def forward(self, x):
        return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])


@pytest.mark.parametrize("stride,padding,padding_mode,bounded", [
    (1, 0, "zeros", False), (2, 1, "zeros", False), (1, 2, "zeros", True), (1, "same", "zeros", False),
    (2, 1, "circular", False),
])
@pytest.mark.parametrize("multistep", [False, True], ids=["conv-on-TxB", "multistep-conv"])
def test_conv2d_equals_spikingjelly_step_by_step(stride, padding, padding_mode, bounded, multistep):
    """The im2col form equals SpikingJelly's ``stdp_conv2d_step`` (on the input padded as the conv pads it)
    applied step by step with the weight fixed. The conv sees [T*B, C, H, W] (flattened by the caller) or
    [T, B, C, H, W] (a multi-step conv)."""
    learning = pytest.importorskip(
        "spikingjelly.activation_based.functional.learning",
        reason="SpikingJelly is not installed (pip install --no-deps -r requirements-peers.txt)")
    torch.manual_seed(0)
    t, b, c, h, w, c_out = 6, 2, 3, 7, 7, 4
    cls = MultiStepConv2d if multistep else nn.Conv2d
    conv = cls(c, c_out, 3, stride=stride, padding=padding, padding_mode=padding_mode, bias=False).double()
    with torch.no_grad():
        conv.weight.uniform_(0.0, 1.0)

    def synapse(x):
        return conv(x) if multistep else conv(x.flatten(0, 1)).unflatten(0, (t, b))

    lif = LIF(tau_mem=2.0)
    kw = dict(w_min=0.0, w_max=1.0) if bounded else {}
    learner = STDPLearner(conv, lif, tau_pre=3.0, tau_post=4.0, a_plus=0.2, a_minus=0.3, **kw)
    x = poisson((t, b, c, h, w), 0.3, 7).double()
    y = lif(synapse(x))
    dw = learner.compute()
    assert y.sum() > 0 and dw.shape == conv.weight.shape
    if conv.padding_mode == "zeros":
        xp = F.pad(x.flatten(0, 1), conv._reversed_padding_repeated_twice)
    else:
        xp = F.pad(x.flatten(0, 1), conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
    xp = xp.unflatten(0, (t, b))
    f_pre = (lambda w_: 0.3 * (w_ - 0.0)) if bounded else (lambda w_: 0.3)
    f_post = (lambda w_: 0.2 * (1.0 - w_)) if bounded else (lambda w_: 0.2)
    trace, total = (torch.zeros_like(xp[0]), torch.zeros_like(y[0])), torch.zeros_like(conv.weight)
    for x_t, y_t in zip(xp, y):
        d, trace = learning.stdp_conv2d_step(x_t, y_t, trace, conv.weight.detach(), stride=conv.stride,
                                             tau_pre=3.0, tau_post=4.0, f_pre=f_pre, f_post=f_post)
        total += d
    assert rel_err(dw, total) <= 1e-12


def test_conv2d_needs_time_first_post():
    conv = nn.Conv2d(2, 3, 3)
    lif = LIF()
    learner = STDPLearner(conv, lif)
    lif(conv(torch.rand(4, 2, 6, 6)))  # a 4-d neuron output: where is time?
    with pytest.raises(ValueError, match=r"\[T, B, Cout, Ho, Wo\]"):
        learner.compute()
