"""The Hatching model: BDH-GPU (Kosowski et al., 2025, "The Dragon Hatchling") with a spiking core.

BDH-GPU's ReLU sparse layer is replaced by leaky integrate-and-fire neurons running along the token
axis: each of the N neurons per head integrates its drive token by token (``bdh_kernels.lif``).
Per layer, with x the residual stream [B, 1, T, D] and LN a LayerNorm without parameters::

    x_lat = x @ E_x                                      # [B, nh, T, N] drive of the x neurons
    x_s   = lif(x_lat, time_dim=2, output="gated")       # spikes * relu(drive): sparse, positive
    k     = stdp_traces(x_s, tau_plus, time_dim=2)       # pre-synaptic traces (x_s itself without STDP)
    y_att = LN(sum_{j < t} <rope(x_s)_t, rope(k)_j> x_j) # strictly causal linear attention, v = x
    y_s   = lif(y_att @ E_y, time_dim=2, output="gated")
    x     = LN(x + LN(sum_heads (x_s * y_s) @ Dec))      # Hebbian gating, decoder back to D

Keys are the neurons' STDP traces: a key at position j remembers the spikes of the last ~tau_plus
tokens up to j, so a query neuron that fires now attends to positions after which that neuron (or its
co-active neighbours) had fired recently. The switches give the ablations: ``lif.enabled=False`` is
ReLU BDH-GPU, ``stdp.enabled=False`` uses x_s as keys (upstream's Q = K).

Neurons must fire. The drive is LN(x) @ E, so its spread is std(E) * sqrt(D); E_x and E_y are
initialised so that the membrane's spread under the LIF filter puts ``bio.sparsity_target`` of it above
threshold (:func:`drive_std`), and the loss adds ``sparsity_weight * mean((rate - target)^2)`` over the
2 * n_layer neuron populations, which keeps the rate near the target in training.

Recurrent form (generation): every step above is per token except three, which are scans over the
tokens and so carry a state: the LIF membranes, the STDP traces, and the attention's running sum
kv = sum_j rope(k)_j^T x_j (a query then reads rope(x_s)_t @ kv). ``model(idx, state, return_state=True)``
feeds a text in chunks, one token at a time included, with the logits of feeding it whole and a
cost per token that does not depend on how long the text already is.
"""
import math
from statistics import NormalDist
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bdh_kernels import LIFState, lif, stdp_traces


def drive_std(tau_mem, tau_syn, decay_input, v_threshold, v_reset, rate, steps=512):
    """The drive spread (std over neurons and tokens) that makes a fraction ``rate`` of membranes cross
    threshold, if the drive were white noise and the neuron never reset: the membrane is then a linear
    filter of the drive with impulse response r_n, its std is std(drive) * sqrt(sum r_n^2), and
    P(h > threshold) = rate gives std(drive) = (threshold - v_rest) / (z_rate * sqrt(sum r_n^2)).
    Real drives are correlated over tokens and spikes reset the membrane, which move the rate in
    opposite directions; tests check that the rate at init stays within [0.02, 0.3].
    """
    k = 1.0 / tau_mem
    a = 1.0 - 1.0 / tau_syn if tau_syn else 0.0
    i = v = 0.0
    energy = 0.0
    for n in range(steps):  # impulse response of drive -> current -> membrane
        i = a * i + (1.0 if n == 0 else 0.0)
        v = v + (i - v) * k if decay_input else v * (1 - k) + i
        energy += v * v
    v_rest = v_reset if v_reset is not None else 0.0
    z = NormalDist().inv_cdf(1.0 - min(max(rate, 1e-3), 0.5))
    return (v_threshold - v_rest) / (max(z, 0.1) * math.sqrt(energy))


# LayerNorm floors for the two rows that can be (nearly) empty. A token whose queries overlap no key's
# spikes gets an attention output near 0, and a token with no co-active x and y neurons a decoder output
# near 0; LayerNorm with eps 1e-5 scales such a row, and its gradient, by up to 1/sqrt(1e-5) (gradient
# norms of 1e9 measured at init). These eps keep weak rows weak. Typical attention rows have variance
# 1e2-1e8 (sums over all earlier keys) and decoder rows 1e-2-1 at init, so ordinary rows are unaffected
# and weak ones are normalised softly.
ATTENTION_EPS = 1.0
DECODER_EPS = 1e-2


def layer_norm(x, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], eps=eps)


class RoPE(torch.autograd.Function):
    """Rotary position embedding on adjacent pairs (upstream BDH's layout), saving no activations.

    Each pair (v[2i], v[2i+1]) is a complex number v[2i] + i v[2i+1] rotated by its phase: with
    ``phase = cos + i sin``, out[2i] = v[2i] cos - v[2i+1] sin and out[2i+1] = v[2i+1] cos + v[2i] sin,
    upstream's ``v * cos + rot(v) * sin``. One complex multiplication (in fp32 at least); the backward is
    the rotation by the conjugate phase, so nothing but the [T, N/2] phase table is saved.
    """

    @staticmethod
    def rotate(v, phase):
        work = v.to(torch.promote_types(v.dtype, torch.float32)).contiguous()
        pairs = torch.view_as_complex(work.view(*v.shape[:-1], v.shape[-1] // 2, 2))
        return torch.view_as_real(pairs * phase).view(v.shape).to(v.dtype)

    @staticmethod
    def forward(ctx, v, phase):
        ctx.save_for_backward(phase)
        return RoPE.rotate(v, phase)

    @staticmethod
    def backward(ctx, grad):
        (phase,) = ctx.saved_tensors
        return RoPE.rotate(grad, phase.conj()), None


def rope_phases(t, n, device, theta=2.0**16, start=0):
    """[T, N/2] complex64 unit phases of upstream BDH for positions start .. start + T - 1:
    angle = 2 pi frac(position * freq), one freq per pair (a position's row does not depend on start).
    start may be a [B] tensor of per-text start positions: the phases are then [B, 1, T, N/2]."""
    pair = torch.arange(0, n, 2, device=device, dtype=torch.float32)
    freqs = 1.0 / theta ** (pair / n) / (2 * math.pi)
    positions = torch.arange(t, device=device, dtype=torch.float32)
    if torch.is_tensor(start):
        positions = start.to(device=device, dtype=torch.float32)[:, None, None] + positions[:, None]  # [B, T, 1]
        phases = (positions * freqs).unsqueeze(1)
    else:
        phases = (positions + start)[:, None] * freqs
    angle = (phases % 1) * (2 * math.pi)
    return torch.polar(torch.ones_like(angle), angle)


def causal_linear_attention(q, k, v):
    """sum_{j < t} <q_t, k_j> v_j: no softmax, key index strictly below the query index."""
    scores = (q @ k.mT).tril(diagonal=-1)
    return scores @ v


def firing_rate(s):
    """Fraction of neuron-steps with a nonzero (gated) output, with a gradient.

    The value is the exact fraction; the gradient is that of mean(s) divided by the mean active value,
    so it flows through the LIF op's surrogate to the drive. (A spike whose drive is not positive
    outputs 0 and is not counted: under hard reset without tau_syn, every spike has a positive drive.)
    """
    active = (s.detach() > 0).sum()
    mean_active = s.detach().sum() / active.clamp_min(1)
    rate = active.float() / s.numel()
    mean = s.float().mean()
    return rate + (mean - mean.detach()) / mean_active.clamp_min(1e-6)


class LayerState(NamedTuple):
    """What one layer carries from a chunk of tokens to the next, so a text can be fed in pieces (one
    token at a time when generating) at a cost per token that does not grow with the text:"""
    x_neurons: Optional[LIFState]  # membranes (and currents) of the x and y neurons; None with ReLU
    y_neurons: Optional[LIFState]
    trace: Optional[torch.Tensor]  # [B, nh, N] STDP trace of x_s after the last token; None without STDP
    kv: torch.Tensor               # [B, nh, N, D] sum_j rope(k)_j^T x_j over the tokens so far (fp32 at least)


class State(NamedTuple):
    position: object               # tokens consumed so far (the next token's RoPE position): an int, or a
                                   # [B] LongTensor when the texts differ in length (stack_states)
    layers: tuple                  # one LayerState per layer


def stack_states(states) -> State:
    """One State for a batch from the States of single texts (of any lengths), in order: how texts
    prefilled one by one are then continued together (generation of a batch of prompts)."""
    def cat(parts):
        return None if parts[0] is None else torch.cat(parts, 0)

    layers = []
    for per_text in zip(*(s.layers for s in states)):
        neurons = []
        for field in ("x_neurons", "y_neurons"):
            lifs = [getattr(layer, field) for layer in per_text]
            neurons.append(None if lifs[0] is None else LIFState(cat([l.v for l in lifs]), cat([l.i for l in lifs])))
        layers.append(LayerState(*neurons, cat([layer.trace for layer in per_text]), cat([layer.kv for layer in per_text])))
    device = layers[0].kv.device
    position = torch.cat([torch.as_tensor(s.position, device=device).reshape(-1).expand(s.layers[0].kv.shape[0])
                          for s in states])
    return State(position, tuple(layers))


class Output(NamedTuple):
    logits: torch.Tensor           # [B, T, 256]
    rates: torch.Tensor            # [n_layer, 2] firing rate of the x and y neurons (differentiable)
    drive: Optional[torch.Tensor]  # [n_layer, 3] sum, sum of squares, count of the LIF input currents
    state: Optional[State] = None  # with return_state=True: the state after the last token


class HatchingLayer(nn.Module):
    """E_x, E_y and Dec: one layer's weights (or all layers', with model.shared_weights)."""

    def __init__(self, cfg):
        super().__init__()
        m, nh = cfg.model, cfg.model.n_head
        d = m.n_embd
        n = m.mlp_internal_dim_multiplier * d // nh
        lc = cfg.lif
        std = drive_std(lc.tau_mem, lc.tau_syn, lc.decay_input, lc.v_threshold, lc.v_reset,
                        cfg.bio.sparsity_target) / math.sqrt(d)
        self.E_x = nn.Parameter(torch.randn(nh, d, n) * std)
        self.E_y = nn.Parameter(torch.randn(nh, d, n) * std)
        self.Dec = nn.Parameter(torch.randn(nh, n, d) * 0.02)
        self.cfg = cfg
        self.drop = nn.Dropout(m.dropout)

    def neurons(self, drive, init: Optional[LIFState], return_state: bool):
        """(gated spikes, LIFState after the last token or None): LIF along the token axis, or ReLU."""
        lc = self.cfg.lif
        if not lc.enabled:
            return F.relu(drive), None
        out = lif(drive, tau_mem=lc.tau_mem, v_threshold=lc.v_threshold, v_reset=lc.v_reset,
                  decay_input=lc.decay_input, tau_syn=lc.tau_syn, surrogate=lc.surrogate, alpha=lc.alpha,
                  detach_reset=lc.detach_reset, time_dim=2, output="gated", backend=lc.backend,
                  v_init=None if init is None else init.v, i_init=None if init is None else init.i,
                  return_state=return_state)
        return out if return_state else (out, None)

    def keys(self, x_s, trace_init, return_state: bool):
        """(keys, trace after the last token or None): the STDP traces of x_s, or x_s itself."""
        if not self.cfg.stdp.enabled:
            return x_s, None
        out = stdp_traces(x_s, self.cfg.stdp.tau_plus, time_dim=2, trace_init=trace_init,
                          return_state=return_state, backend=self.cfg.lif.backend)
        return out if return_state else (out, None)

    def forward(self, x, phase, collect_stats: bool = False, state: Optional[LayerState] = None,
                return_state: bool = False):
        """x [B, 1, T, D] (tokens after those ``state`` has seen; None: the start of the text) ->
        (x, rates, drive stats or None, LayerState after the last token or None)."""
        x_lat = x @ self.E_x                                         # [B, nh, T, N]
        x_s, x_state = self.neurons(x_lat, None if state is None else state.x_neurons, return_state)
        k, trace = self.keys(x_s, None if state is None else state.trace, return_state)
        q, k = RoPE.apply(x_s, phase), RoPE.apply(k, phase)
        att = causal_linear_attention(q, k, x)
        kv = None
        if state is not None or return_state:
            # the earlier tokens' keys and values, summed (outside autocast: a long sum in bf16 drifts)
            with torch.autocast(x.device.type, enabled=False):
                acc = torch.promote_types(x.dtype, torch.float32)
                if state is not None:
                    att = att + (q.to(acc) @ state.kv).to(att.dtype)
                if return_state:
                    kv = k.to(acc).mT @ x.to(acc)
                    kv = kv if state is None else kv + state.kv
        y_att = layer_norm(att, ATTENTION_EPS)
        y_lat = y_att @ self.E_y
        y_s, y_state = self.neurons(y_lat, None if state is None else state.y_neurons, return_state)
        xy = self.drop(x_s * y_s)
        y = layer_norm((xy @ self.Dec).sum(1, keepdim=True), DECODER_EPS)  # [B, 1, T, D]
        x = layer_norm(x + y)
        rates = torch.stack((firing_rate(x_s), firing_rate(y_s)))
        drive = None
        if collect_stats:
            with torch.no_grad():
                drive = torch.stack([sum(t.float().sum() for t in (x_lat, y_lat)),
                                     sum(t.float().square().sum() for t in (x_lat, y_lat)),
                                     torch.tensor(float(x_lat.numel() + y_lat.numel()), device=x.device)])
        return x, rates, drive, LayerState(x_state, y_state, trace, kv) if return_state else None


def check_ids(idx, vocab_size: int) -> None:
    """A clear error for model input that is not [B, T] integer byte ids in [0, vocab_size) with T >= 1.
    The range is checked on the CPU only: on a GPU it would wait for the device (the embedding's own
    check stops the kernel there instead)."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
        what = f"{tuple(idx.shape)} {idx.dtype}" if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a [B, T] tensor of byte ids (int64 or int32), got {what}")
    if idx.shape[1] == 0:
        raise ValueError(f"idx must have at least one token, got shape {tuple(idx.shape)}")
    if idx.device.type == "cpu" and idx.numel():
        low, high = (int(v) for v in idx.aminmax())
        if not 0 <= low <= high < vocab_size:
            raise ValueError(f"idx must hold byte ids in [0, {vocab_size}), got values from {low} to {high}")


def check_state(state, batch: int, model) -> None:
    """A clear error for a State that cannot continue this batch on ``model``: another batch size, or
    another model's State (other layers or neurons, LIF/STDP switches or tau_syn, dtype or device)."""
    n_layer = model.cfg.model.n_layer
    if not isinstance(state, State) or len(state.layers) != n_layer:
        raise ValueError(f"state must be the State this model returned (n_layer={n_layer}), got {type(state).__name__}")
    kv = state.layers[0].kv
    if not isinstance(kv, torch.Tensor) or kv.dim() != 4 or kv.shape[0] != batch:
        raise ValueError(f"state is for a batch of {kv.shape[0] if isinstance(kv, torch.Tensor) else None} "
                         f"texts, idx has {batch}")
    for i, layer in enumerate(state.layers):
        for name, got, want in state_fields(layer, model, batch):
            problem = state_field_problem(got, want, model.lm_head)
            if problem:
                raise ValueError(f"state does not fit this model: layer {i}'s {name} {problem} (a State of "
                                 "another model or configuration?)")


def state_fields(layer: LayerState, model, batch: int):
    """(name, the layer state's tensor or None, the shape this model gives it or None when it has none)."""
    cfg, n = model.cfg, model.n_neurons
    neurons = (batch, cfg.model.n_head, n)
    lif_on, syn = cfg.lif.enabled, cfg.lif.tau_syn is not None
    fields = [("kv", layer.kv, (batch, cfg.model.n_head, n, cfg.model.n_embd)),
              ("trace", layer.trace, neurons if cfg.stdp.enabled else None)]
    for name in ("x_neurons", "y_neurons"):
        lif_state = getattr(layer, name)
        if lif_state is None or not lif_on:
            fields.append((name, lif_state, neurons if lif_on else None))
        else:
            fields += [(f"{name}.v", lif_state.v, neurons), (f"{name}.i", lif_state.i, neurons if syn else None)]
    return fields


def state_field_problem(got, want, like: torch.Tensor) -> Optional[str]:
    """Why a state tensor does not fit (its expected shape ``want``, None: absent), or None. States are
    in the dtype the model computes them in: fp32, fp64 for a fp64 model; on the model's device."""
    if want is None:
        return None if got is None else "is set, but this model keeps none"
    if not isinstance(got, torch.Tensor):
        return f"is {type(got).__name__}, but this model keeps a tensor of shape {want}"
    dtype = torch.promote_types(like.dtype, torch.float32)
    if tuple(got.shape) != want or got.dtype != dtype or got.device != like.device:
        return (f"is {tuple(got.shape)} {got.dtype} on {got.device}, this model's is {want} {dtype} on "
                f"{like.device}")
    return None


class Hatching(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        m = cfg.model
        self.cfg = cfg
        self.n_neurons = m.mlp_internal_dim_multiplier * m.n_embd // m.n_head  # N per head
        self.embed = nn.Embedding(m.vocab_size, m.n_embd)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.layers = nn.ModuleList(HatchingLayer(cfg) for _ in range(1 if m.shared_weights else m.n_layer))
        self.lm_head = nn.Parameter(torch.randn(m.n_embd, m.vocab_size) * 0.02)
        self.activation_checkpointing = False
        self.collect_stats = False  # also return the LIF drive statistics (for logging)

    def forward(self, idx, state: Optional[State] = None, return_state: bool = False) -> Output:
        """idx [B, T] byte ids -> Output(logits [B, T, 256], rates [n_layer, 2], drive stats or None,
        State or None).

        state: the State after the text before idx (from an earlier call with return_state=True), so
        a text fed in chunks gives the logits of feeding it whole; None: idx starts the text.
        """
        check_ids(idx, self.cfg.model.vocab_size)
        b, t = idx.shape
        if state is not None:
            check_state(state, b, self)
        start = 0 if state is None else state.position
        phase = rope_phases(t, self.n_neurons, idx.device, start=start)
        x = layer_norm(self.embed(idx)).unsqueeze(1)                # [B, 1, T, D]
        rates, drives, states = [], [], []
        for i in range(self.cfg.model.n_layer):
            layer = self.layers[i % len(self.layers)]
            args = (x, phase, self.collect_stats, None if state is None else state.layers[i], return_state)
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x, r, d, s = checkpoint(layer, *args, use_reentrant=False)
            else:
                x, r, d, s = layer(*args)
            rates.append(r)
            drives.append(d)
            states.append(s)
        logits = x.squeeze(1) @ self.lm_head
        return Output(logits, torch.stack(rates), torch.stack(drives) if self.collect_stats else None,
                      State(start + t, tuple(states)) if return_state else None)

    def sparsity_loss(self, rates):
        """sparsity_weight * mean over neuron populations of (rate - sparsity_target)^2."""
        bio = self.cfg.bio
        return bio.sparsity_weight * (rates.float() - bio.sparsity_target).square().mean()
