"""Modules over the ops, for use in any PyTorch model."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import backends
from .checks import check_bool, check_int, check_number, check_step_mode, check_weight_bounds
from .lif import check_neuron, lif
from .stdp import STDPState, _check_tau, _spike_driven, _weight_change, stdp_traces, stdp_update


def check_carried(owner: str, what: str, carried: torch.Tensor, x, time_dim: int) -> None:
    """A state a module carries from its previous call must fit the neurons of x (x without its time
    dim); a clear error naming reset() otherwise. The ops check everything else (a bad time_dim too)."""
    if not isinstance(x, torch.Tensor) or not -x.dim() <= time_dim < x.dim():
        return
    t = time_dim % x.dim()
    neurons = x.shape[:t] + x.shape[t + 1:]
    if carried.shape != neurons:
        raise ValueError(f"this {owner} carries {what} of shape {tuple(carried.shape)} from its previous call, but "
                         f"the input's neurons are {tuple(neurons)}: call reset() before a batch of another shape")


class LIF(nn.Module):
    """Leaky integrate-and-fire neurons as a layer: a drop-in replacement for an activation.

    The arguments are those of :func:`bdh_kernels.lif` (see its docstring for the formulas), plus:

    * ``step_mode="m"`` (multi-step): ``forward(x)`` takes a whole sequence with time along ``time_dim``.
      Each call starts from rest unless ``stateful=True``, in which case the final state of one call is
      the initial state of the next until :meth:`reset` (SpikingJelly's behaviour). The carried state
      keeps its autograd graph, so gradients flow back through earlier calls: call :meth:`reset` (e.g.
      :func:`bdh_kernels.nn.reset` on the model) before each new sequence or optimizer step.
    * ``step_mode="s"`` (single-step, for streaming): ``forward(x)`` takes one time step (no time dim),
      and the membrane carries over between calls until :meth:`reset`. Running a sequence step by step
      gives the same spikes and gradients as one multi-step call.
    """

    def __init__(self, tau_mem: float = 2.0, v_threshold: float = 1.0, v_reset: Optional[float] = 0.0,
                 decay_input: bool = True, tau_syn: Optional[float] = None, surrogate: str = "sigmoid",
                 alpha: Optional[float] = None, detach_reset: bool = False, output: str = "spike",
                 step_mode: str = "m", time_dim: int = 0, stateful: bool = False,
                 backend: Optional[str] = None):
        super().__init__()
        check_step_mode(step_mode)
        check_bool("stateful", stateful)
        # checked now rather than at the first forward
        check_neuron(tau_mem, v_threshold, v_reset, decay_input, tau_syn, surrogate, alpha, detach_reset, output)
        check_int("time_dim", time_dim)
        backends.check_name(backend)
        self.params = dict(tau_mem=tau_mem, v_threshold=v_threshold, v_reset=v_reset,
                           decay_input=decay_input, tau_syn=tau_syn, surrogate=surrogate, alpha=alpha,
                           detach_reset=detach_reset, output=output, backend=backend)
        self.step_mode, self.time_dim, self.stateful = step_mode, time_dim, stateful
        self.v: Optional[torch.Tensor] = None
        self.i: Optional[torch.Tensor] = None

    def reset(self):
        """Forget the membrane (and synaptic current): the next call starts from rest."""
        self.v = self.i = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):  # before x.unsqueeze below
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        single = self.step_mode == "s"
        keep = single or self.stateful
        x_seq, time_dim = (x.unsqueeze(0), 0) if single else (x, self.time_dim)
        if keep and self.v is not None:
            check_carried("LIF", "a state", self.v, x_seq, time_dim)
        out, state = lif(x_seq, time_dim=time_dim, v_init=self.v if keep else None,
                         i_init=self.i if keep else None, return_state=True, **self.params)
        if keep:
            self.v, self.i = state
        return out.squeeze(0) if single else out

    def extra_repr(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.params.items() if v is not None)
        return f"{shown}, step_mode={self.step_mode!r}"


def reset(model: nn.Module):
    """Reset every :class:`LIF` in ``model`` (SpikingJelly's ``functional.reset_net``)."""
    for module in model.modules():
        if isinstance(module, LIF):
            module.reset()


class STDPLearner(nn.Module):
    r"""Unsupervised pair-based STDP for one synapse layer, computed in one call per recorded sequence.

    ``STDPLearner(linear, lif)`` hooks ``linear`` (an ``nn.Linear``, or an ``nn.Conv2d`` with ``groups=1``)
    and ``lif`` (the module that emits that layer's post-synaptic spikes: :class:`LIF` or any spiking
    module). While enabled, every forward of the model records the synapse's input (pre spikes) and the
    neuron's output (post spikes), detached. :meth:`compute` turns the recordings into ``dW`` with
    :func:`bdh_kernels.stdp_update` (fused trace scans and two products over all ``T*B`` rows: no
    ``[B, Nout, Nin]`` tensor per step, unlike SpikingJelly's and snnTorch's learners), carrying the traces
    across calls until :meth:`reset`; :meth:`step` / :meth:`apply_delta` add ``lr * dW`` to the weight in place
    under ``torch.no_grad()``. The bias is not learned. Formulas and soft bounds: :func:`bdh_kernels.stdp_update`.

    Shapes (multi-step, ``step_mode="m"``): ``nn.Linear`` input ``[T, B, ..., Nin]`` and neuron output
    ``[T, B, ..., Nout]`` with time along ``time_dim``. ``step_mode="s"``: each forward is one time step
    (no time dim); consecutive forwards are consecutive steps. ``nn.Conv2d`` (multi-step, time first): the
    neuron output is ``[T, B, Cout, Ho, Wo]`` and the conv input ``[T, B, C, H, W]`` or the flattened
    ``[T*B, C, H, W]``; the update is the im2col form: the conv input (padded as the conv pads it) and its
    trace are unfolded into ``[T*B*Ho*Wo, C*kh*kw]`` rows, the post spikes into ``[T*B*Ho*Wo, Cout]`` rows,
    and ``dW`` is the same two products, reshaped to the conv weight. This equals SpikingJelly's
    ``stdp_conv2d_step`` summed over steps; its memory is that of the unfolded input (kh*kw times the input).

    The learner keeps references to ``linear`` and ``lif`` without registering them as submodules, so
    adding it to a model does not duplicate their parameters in ``state_dict``.

    Args:
        linear: the synapse whose ``weight`` learns.
        lif: the module whose output is the post-synaptic spikes of ``linear``'s output neurons.
        tau_pre, tau_post, a_plus, a_minus, w_min, w_max: as :func:`bdh_kernels.stdp_update` (soft bounds
            when both ``w_min`` and ``w_max`` are given; the current weight is read at each compute).
        time_dim: the time dim of the recorded tensors (multi-step; 0 for ``nn.Conv2d``).
        step_mode: ``"m"`` (each forward is a sequence) or ``"s"`` (each forward is one step).
        backend: the backend of the trace scans.
    """

    def __init__(self, linear: nn.Module, lif: nn.Module, tau_pre: float = 20.0, tau_post: float = 20.0,
                 a_plus: float = 0.01, a_minus: float = 0.0105, w_min: Optional[float] = None,
                 w_max: Optional[float] = None, time_dim: int = 0, step_mode: str = "m",
                 backend: Optional[str] = None):
        super().__init__()
        if isinstance(linear, nn.Conv2d):
            if linear.groups != 1:
                raise ValueError(f"STDPLearner supports nn.Conv2d with groups=1 only, got groups={linear.groups}")
            if step_mode != "m" or time_dim != 0:
                raise ValueError('STDPLearner on an nn.Conv2d records time-first sequences: step_mode="m", '
                                 "time_dim=0")
        elif not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear or nn.Conv2d (groups=1), got {type(linear).__name__}; "
                            "for other synapses call bdh_kernels.stdp_update on their pre and post spikes")
        if not isinstance(lif, nn.Module):
            raise TypeError(f"lif must be the nn.Module that emits the post-synaptic spikes, got {type(lif).__name__}")
        check_step_mode(step_mode)
        if (w_min is None) != (w_max is None):
            raise ValueError("soft bounds need both w_min and w_max (or neither)")
        # validate the parameters now rather than at the first compute
        _check_tau("tau_pre", tau_pre)
        _check_tau("tau_post", tau_post)
        check_int("time_dim", time_dim)
        backends.check_name(backend)
        self.params = dict(tau_pre=tau_pre, tau_post=tau_post, a_plus=check_number("a_plus", a_plus),
                           a_minus=check_number("a_minus", a_minus), backend=backend)
        self.w_min, self.w_max = (None, None) if w_min is None else check_weight_bounds(w_min, w_max)
        self.time_dim, self.step_mode = time_dim, step_mode
        object.__setattr__(self, "synapse", linear)  # not a submodule: see the class docstring
        object.__setattr__(self, "neuron", lif)
        self.enabled = True
        self.state: Optional[STDPState] = None
        self.delta_w: Optional[torch.Tensor] = None
        self._pre, self._post = [], []
        self._hooks = [linear.register_forward_hook(self._record_pre),
                       lif.register_forward_hook(self._record_post)]

    # ------------------------------------------------------------------------------------- recording
    def _record_pre(self, module, inputs, output):
        if self.enabled:
            self._pre.append(inputs[0].detach())

    def _record_post(self, module, inputs, output):
        if self.enabled:
            out = output[0] if isinstance(output, (tuple, list)) else output
            self._post.append(out.detach())

    def enable(self):
        """Record the forwards from now on (the default)."""
        self.enabled = True

    def disable(self):
        """Stop recording (e.g. for evaluation); recordings and traces are kept."""
        self.enabled = False

    def reset(self):
        """Forget the recordings, the traces and the accumulated ``delta_w``; the weight is untouched."""
        self._pre, self._post = [], []
        self.state = None
        self.delta_w = None

    def close(self):
        """Remove the hooks; the learner records nothing after this."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.enabled = False

    # ---------------------------------------------------------------------------------------- update
    @torch.no_grad()
    def compute(self) -> Optional[torch.Tensor]:
        """``dW`` of everything recorded since the last compute, in one :func:`stdp_update` per recorded
        forward (traces carried across them); added to :attr:`delta_w` and returned (None if nothing was
        recorded). The recordings are consumed."""
        if len(self._pre) != len(self._post):
            raise RuntimeError(f"recorded {len(self._pre)} inputs of the synapse but {len(self._post)} outputs of "
                               "the neuron: both must run once per forward")
        pre_list, post_list = self._pre, self._post
        self._pre, self._post = [], []
        total = None
        for pre, post in zip(pre_list, post_list):
            if self.step_mode == "s":
                pre, post = pre.unsqueeze(0), post.unsqueeze(0)
            if isinstance(self.synapse, nn.Conv2d):
                dw = self._conv_update(pre, post)
            else:
                bounds = {}
                if self.w_min is not None:
                    bounds = dict(weight=self.synapse.weight, w_min=self.w_min, w_max=self.w_max)
                time_dim = 0 if self.step_mode == "s" else self.time_dim
                self._check_carried_traces(pre, post, time_dim)
                dw, self.state = stdp_update(pre.to(post.dtype), post, time_dim=time_dim, state=self.state,
                                             **bounds, **self.params)
            if dw.shape != self.synapse.weight.shape:
                raise ValueError(f"the recorded spikes give a dW of shape {tuple(dw.shape)} for a weight of shape "
                                 f"{tuple(self.synapse.weight.shape)}: is lif the neuron after linear?")
            total = dw if total is None else total.add_(dw)
        if total is not None:
            self.delta_w = total.clone() if self.delta_w is None else self.delta_w.add_(total)
        return total

    @torch.no_grad()
    def apply_delta(self, lr: float = 1.0) -> Optional[torch.Tensor]:
        """Add ``lr * delta_w`` to the weight in place (``delta_w``: what :meth:`compute` accumulated, plus
        anything still recorded), then clear ``delta_w``. Returns the ``delta_w`` applied (before ``lr``)."""
        lr = check_number("lr", lr)
        self.compute()
        dw, self.delta_w = self.delta_w, None
        if dw is not None:
            weight = self.synapse.weight
            weight.add_(dw.to(weight.dtype), alpha=lr)
        return dw

    def step(self, lr: float = 1.0) -> Optional[torch.Tensor]:
        """One learning step: the ``dW`` of the sequence(s) recorded since the last step, applied as
        ``weight += lr * dW``. The usual call once per forward; returns ``dW``."""
        return self.apply_delta(lr)

    def _check_carried_traces(self, pre, post, time_dim):
        if self.state is not None:
            check_carried("learner", "pre traces", self.state.pre, pre, time_dim)
            check_carried("learner", "post traces", self.state.post, post, time_dim)

    def _conv_update(self, pre, post):
        conv = self.synapse
        if post.dim() != 5:
            raise ValueError("STDPLearner on an nn.Conv2d needs the neuron's output as [T, B, Cout, Ho, Wo] "
                             f"(time first), got shape {tuple(post.shape)}")
        t, b = post.shape[:2]
        if pre.dim() == 4:
            if pre.shape[0] != t * b:
                raise ValueError(f"the conv input [{pre.shape[0]}, ...] is neither [T, B, ...] nor [T*B, ...] for "
                                 f"the neuron's T={t}, B={b}")
            pre = pre.unflatten(0, (t, b))
        if pre.dim() != 5 or pre.shape[:2] != post.shape[:2]:
            raise ValueError(f"conv input {tuple(pre.shape)} and neuron output {tuple(post.shape)} must share [T, B]")
        pre = pre.to(post.dtype)
        self._check_carried_traces(pre, post, 0)
        init_pre, init_post = self.state if self.state is not None else (None, None)
        tr_pre, fin_pre = stdp_traces(pre, self.params["tau_pre"], trace_init=init_pre, return_state=True,
                                      backend=self.params["backend"])
        tr_post, fin_post = stdp_traces(post, self.params["tau_post"], trace_init=init_post, return_state=True,
                                        backend=self.params["backend"])
        self.state = STDPState(fin_pre, fin_post)

        def columns(x):  # [T, B, C, H, W] -> [T*B*L, C*kh*kw] rows of the padded, unfolded input
            x = x.flatten(0, 1)
            if any(conv._reversed_padding_repeated_twice):
                mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
                x = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
            cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
            return cols.transpose(1, 2).reshape(-1, cols.shape[1])

        def rows(y):  # [T, B, Cout, Ho, Wo] -> [T*B*Ho*Wo, Cout]
            return y.flatten(3).transpose(2, 3).reshape(-1, y.shape[2])

        if post.shape[2] != conv.out_channels:
            raise ValueError(f"the neuron output has {post.shape[2]} channels, the conv {conv.out_channels}")
        pre_cols, tr_pre_cols = columns(pre), columns(tr_pre)
        if pre_cols.shape[0] != post.numel() // post.shape[2]:
            raise ValueError(f"the neuron output's spatial size {tuple(post.shape[3:])} is not the conv output's "
                             f"for input {tuple(pre.shape[3:])}")
        bounds = (self.w_min, self.w_max) if self.w_min is not None else (None, None)
        weight = conv.weight.flatten(1) if self.w_min is not None else None
        choice = backends.select("stdp_update", post.device, self.params["backend"])
        spike_driven = _spike_driven(choice, pre, post, init_pre, init_post)
        dw = _weight_change(pre_cols, tr_pre_cols, rows(post), rows(tr_post), self.params["a_plus"],
                            self.params["a_minus"], weight, *bounds, spike_driven)
        return dw.view(conv.weight.shape)

    def extra_repr(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.params.items() if v is not None)
        bounds = f", w_min={self.w_min}, w_max={self.w_max}" if self.w_min is not None else ""
        return f"{type(self.synapse).__name__} -> {type(self.neuron).__name__}, {shown}{bounds}, step_mode={self.step_mode!r}"
