"""Typed training config: dataclass defaults, a YAML file over them, ``--set section.key=value`` over that.

A config has eight sections (the training guide's config file): ``model``, ``lif``, ``stdp``, ``training``,
``curriculum``, ``bio``, ``monitor``, ``data``. Every field has a typed default below; a YAML file sets
some of them; ``--set training.learning_rate=3e-4`` sets any one from the command line. Unknown keys and
values of the wrong type are errors that name the key (``training.learning_rte: unknown key ...``).

Tiers (``bdh/configs/<name>.yaml``): ``tiny`` (the CPU default), ``small``, ``medium``, ``large``.
``load_config("small")`` loads a tier by name; anything ending in .yaml/.yml (or an existing file) is a path.

Numbers: YAML 1.1 reads ``1e-3`` (no dot) as a string, so float fields accept numeric strings; int
fields accept integral numbers ("10000", 1e4). Bools must be true/false.

A config goes into checkpoints as ``config.to_dict()`` (plain dicts, lists, numbers, strings: safe for
``torch.load(weights_only=True)``) and comes back with ``Config.from_dict(d)``.
"""
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Optional

import yaml

from bdh.data import TASKS

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
TIERS = ("tiny", "small", "medium", "large")

# The guide's four stages; a stage without a name gets the one at its index.
STAGE_NAMES = ("text_coherence", "function_calling", "bash_commands", "multi_task")


class ConfigError(ValueError):
    """A bad config: unknown key, wrong type or value out of range (the message names the key)."""


# ------------------------------------------------------------------------------------------ sections
@dataclass
class ModelConfig:
    n_layer: int = 6
    n_embd: int = 256                     # D
    n_head: int = 4                       # nh
    mlp_internal_dim_multiplier: int = 128  # neurons per head N = multiplier * D / nh (upstream BDH's name)
    dropout: float = 0.1
    vocab_size: int = 256                 # bytes; fixed
    shared_weights: bool = True           # one E_x, E_y, Dec for all layers, as upstream BDH-GPU


@dataclass
class LIFConfig:
    enabled: bool = True                  # False: ReLU instead of LIF (BDH-GPU, the ablation)
    tau_mem: float = 2.0                  # in tokens
    tau_syn: Optional[float] = None       # None: voltage-based LIF; a float: current-based (synaptic filter)
    v_threshold: float = 1.0
    v_reset: Optional[float] = 0.0        # None: soft reset (v -= v_threshold)
    decay_input: bool = True
    surrogate: str = "sigmoid"
    alpha: Optional[float] = None         # surrogate sharpness; None: the surrogate's default
    detach_reset: bool = False
    backend: Optional[str] = None         # None: bdh_kernels picks (or $BDH_KERNELS_BACKEND)


@dataclass
class STDPConfig:
    enabled: bool = True                  # False: keys are the spikes x_s themselves (no traces)
    tau_plus: float = 20.0                # pre-synaptic trace time constant, in tokens: the keys' memory
    # The STDP weight rule's other constants. The model's keys use tau_plus only; these are kept so
    # the guide's configs load and travel with checkpoints (bdh_kernels.stdp_update takes them).
    tau_minus: float = 20.0
    A_plus: float = 0.01
    A_minus: float = 0.0105


@dataclass
class TrainingConfig:
    batch_size: int = 32                  # effective (global) batch: all ranks, all micro-batches
    max_seq_len: int = 512
    learning_rate: float = 1e-3
    min_lr: Optional[float] = None        # cosine floor; None: learning_rate / 10
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    max_iters: int = 10000
    warmup_iters: int = 500
    grad_clip: float = 1.0                # 0: no clipping
    # 0: the largest that fits memory_budget_gb (see --dry-run). The sparsity loss is on each micro-batch's
    # mean firing rate, so results depend slightly on it: set it to reproduce a run on another machine.
    micro_batch_size: int = 0
    memory_budget_gb: float = 0.0         # 0: the device's memory (GPU) / 80% of RAM (CPU)
    activation_checkpointing: bool = False  # recompute each layer in the backward
    dtype: str = "auto"                   # auto (bf16 autocast on GPU, fp32 on CPU) | float32 | bfloat16
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    seed: int = 1337
    compile: bool = False                 # torch.compile the model


@dataclass
class Stage:
    iters: int
    weights: dict                         # {task: weight}
    name: str = ""


def _default_stages():
    return [
        Stage(2000, {"text_completion": 0.7, "chain_of_thought": 0.3}, STAGE_NAMES[0]),
        Stage(3000, {"text_completion": 0.3, "function_call": 0.4, "chain_of_thought": 0.3}, STAGE_NAMES[1]),
        Stage(3000, {"text_completion": 0.2, "function_call": 0.3, "bash_command": 0.3,
                     "chain_of_thought": 0.2}, STAGE_NAMES[2]),
        Stage(2000, {"text_completion": 0.15, "function_call": 0.2, "bash_command": 0.2, "tool_use": 0.25,
                     "chain_of_thought": 0.2}, STAGE_NAMES[3]),
    ]


@dataclass
class CurriculumConfig:
    enabled: bool = True                  # False: one stage, the last stage's mix, for all iterations
    stages: list = field(default_factory=_default_stages)  # list[Stage]; iters are scaled to max_iters


@dataclass
class BioConfig:
    sparsity_target: float = 0.1          # target firing rate of the LIF populations
    sparsity_weight: float = 0.001        # weight of mean((rate - target)^2) in the loss


@dataclass
class MonitorConfig:
    log_freq: int = 100                   # steps between metrics.jsonl rows
    eval_freq: int = 500                  # steps between val evaluations (also at each stage end)
    save_freq: int = 1000                 # steps between hatching_step_N.pt
    nan_check: bool = True                # skip steps with a non-finite loss or gradient
    max_bad_steps: int = 10               # stop after this many skipped steps in a row
    eval_batches: int = 4                 # val batches per task (of training.batch_size records)
    eval_samples: int = 8                 # val prompts per task answered and scored at each eval (0: none)
    eval_max_new_tokens: int = 128        # longest answer at those evals, in bytes
    best_metric: str = "val_loss"         # hatching_best.pt: the lowest "val_loss", or "overall" (ties: val_loss)
    tensorboard: bool = True              # event files beside metrics.jsonl when tensorboard is installed


@dataclass
class DataConfig:
    dir: Optional[str] = None             # a `python -m bdh.data prepare` output; None: the bundled starter set
    max_bytes: int = 0                    # longest record kept (0: bdh.data's default)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lif: LIFConfig = field(default_factory=LIFConfig)
    stdp: STDPConfig = field(default_factory=STDPConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    bio: BioConfig = field(default_factory=BioConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict:
        """Plain data (for checkpoints, logs and wandb)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        cfg = cls()
        apply_dict(cfg, d)
        validate(cfg)
        return cfg

    def stages(self) -> list:
        """[ScheduledStage(name, first, last, weights)]: steps 1-based, scaled to training.max_iters."""
        return stage_schedule(self)


# ------------------------------------------------------------------------------------ typed parsing
def _coerce(key: str, value, tp):
    """``value`` as type ``tp`` (int/float/bool/str/Optional[...]/dict/list[Stage]), or ConfigError."""
    if typing.get_origin(tp) is typing.Union:  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(key, value, inner)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if math.isfinite(value):
                return value
    elif tp is int:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            return {str(k): _coerce(f"{key}.{k}", v, float) for k, v in value.items()}
    elif tp is list:  # curriculum.stages
        if isinstance(value, list):
            return [_stage(f"{key}[{i}]", s) for i, s in enumerate(value)]
    else:
        raise TypeError(f"no parser for {tp}")
    want = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{key}: expected {want}, got {type(value).__name__} {value!r}")


def _stage(key: str, value) -> Stage:
    if isinstance(value, Stage):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping with iters and weights, got {value!r}")
    known = {f.name: f for f in dataclasses.fields(Stage)}
    for k in value:
        if k not in known:
            raise ConfigError(f"{key}.{k}: unknown key (known: {', '.join(known)})")
    for k in ("iters", "weights"):
        if k not in value:
            raise ConfigError(f"{key}.{k}: missing")
    return Stage(iters=_coerce(f"{key}.iters", value["iters"], int),
                 weights=_coerce(f"{key}.weights", value["weights"], dict),
                 name=_coerce(f"{key}.name", value.get("name", ""), str))


def _field_types(obj) -> dict:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def set_value(cfg: Config, dotted: str, value) -> None:
    """Set ``section.key`` to ``value`` (parsed and type-checked)."""
    parts = dotted.split(".")
    if len(parts) != 2:
        raise ConfigError(f"{dotted}: expected section.key (sections: {', '.join(_field_types(cfg))})")
    section, key = parts
    if section not in _field_types(cfg):
        raise ConfigError(f"{section}: unknown section (known: {', '.join(_field_types(cfg))})")
    sub = getattr(cfg, section)
    types = _field_types(sub)
    if key not in types:
        raise ConfigError(f"{dotted}: unknown key (known in {section}: {', '.join(types)})")
    setattr(sub, key, _coerce(dotted, value, types[key]))


def apply_dict(cfg: Config, d: dict, source: str = "config") -> None:
    """Set every ``{section: {key: value}}`` of d onto cfg."""
    if d is None:
        return
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(d).__name__}")
    for section, values in d.items():
        if section not in _field_types(cfg):
            raise ConfigError(f"{section}: unknown section (known: {', '.join(_field_types(cfg))})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: expected a mapping of keys, got {type(values).__name__}")
        for key, value in values.items():
            set_value(cfg, f"{section}.{key}", value)


def parse_override(text: str) -> tuple:
    """``"training.learning_rate=3e-4"`` -> ("training.learning_rate", 3e-4): the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot read value {raw!r}: {e}") from None
    return key.strip(), value


# ------------------------------------------------------------------------------------------- checks
def validate(cfg: Config) -> Config:
    """Range and consistency checks; each error names its key."""
    def need(ok, key, msg):
        if not ok:
            raise ConfigError(f"{key}: {msg}")

    m, t = cfg.model, cfg.training
    for key in ("n_layer", "n_embd", "n_head", "mlp_internal_dim_multiplier"):
        need(getattr(m, key) >= 1, f"model.{key}", f"must be >= 1, got {getattr(m, key)}")
    need(m.n_embd % m.n_head == 0, "model.n_embd", f"{m.n_embd} is not divisible by model.n_head={m.n_head}")
    need(m.mlp_internal_dim_multiplier * m.n_embd % m.n_head == 0, "model.mlp_internal_dim_multiplier",
         "multiplier * n_embd must be divisible by n_head")
    need(m.vocab_size == 256, "model.vocab_size", f"the model is byte-level: must be 256, got {m.vocab_size}")
    need(0 <= m.dropout < 1, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    need(cfg.lif.tau_mem > (1 if cfg.lif.decay_input else 0), "lif.tau_mem",
         f"must be > {1 if cfg.lif.decay_input else 0} (decay_input={cfg.lif.decay_input}), got {cfg.lif.tau_mem}")
    need(cfg.lif.tau_syn is None or cfg.lif.tau_syn >= 1, "lif.tau_syn", f"must be >= 1 or null, got {cfg.lif.tau_syn}")
    need(cfg.lif.v_threshold > 0, "lif.v_threshold", f"must be > 0, got {cfg.lif.v_threshold}")
    need(cfg.lif.v_reset is None or cfg.lif.v_reset < cfg.lif.v_threshold, "lif.v_reset",
         "must be below lif.v_threshold (or null for soft reset)")
    from bdh_kernels.backends import BACKENDS
    from bdh_kernels.surrogate import SURROGATES

    need(cfg.lif.backend is None or cfg.lif.backend in BACKENDS, "lif.backend",
         f"must be one of {', '.join(BACKENDS)} or null (the package picks), got {cfg.lif.backend!r}")
    need(cfg.lif.surrogate in SURROGATES, "lif.surrogate",
         f"must be one of {', '.join(SURROGATES)}, got {cfg.lif.surrogate!r}")
    need(cfg.stdp.tau_plus >= 1, "stdp.tau_plus", f"must be >= 1 (in tokens), got {cfg.stdp.tau_plus}")
    need(cfg.stdp.tau_minus >= 1, "stdp.tau_minus", f"must be >= 1 (in tokens), got {cfg.stdp.tau_minus}")
    for key in ("batch_size", "max_seq_len", "max_iters"):
        need(getattr(t, key) >= 1, f"training.{key}", f"must be >= 1, got {getattr(t, key)}")
    need(t.learning_rate > 0, "training.learning_rate", f"must be > 0, got {t.learning_rate}")
    need(t.min_lr is None or 0 <= t.min_lr <= t.learning_rate, "training.min_lr",
         f"must be in [0, training.learning_rate] or null, got {t.min_lr} with learning_rate {t.learning_rate} "
         f"(lowering the learning rate? set training.min_lr too, or null for learning_rate / 10)")
    need(t.warmup_iters >= 0, "training.warmup_iters", f"must be >= 0, got {t.warmup_iters}")
    need(t.grad_clip >= 0, "training.grad_clip", f"must be >= 0, got {t.grad_clip}")
    need(t.weight_decay >= 0, "training.weight_decay", f"must be >= 0, got {t.weight_decay}")
    for key in ("beta1", "beta2"):
        need(0 <= getattr(t, key) < 1, f"training.{key}", f"must be in [0, 1), got {getattr(t, key)}")
    need(0 <= t.seed < 2**32, "training.seed", f"must be in [0, 2**32), got {t.seed}")
    need(cfg.data.max_bytes >= 0, "data.max_bytes", f"must be >= 0 (0: the default), got {cfg.data.max_bytes}")
    need(t.micro_batch_size >= 0, "training.micro_batch_size", f"must be >= 0 (0: automatic), got {t.micro_batch_size}")
    need(t.memory_budget_gb >= 0, "training.memory_budget_gb", f"must be >= 0, got {t.memory_budget_gb}")
    need(t.dtype in ("auto", "float32", "bfloat16"), "training.dtype",
         f"must be auto, float32 or bfloat16, got {t.dtype!r}")
    need(0 <= cfg.bio.sparsity_target <= 1, "bio.sparsity_target", f"must be in [0, 1], got {cfg.bio.sparsity_target}")
    need(cfg.bio.sparsity_weight >= 0, "bio.sparsity_weight", f"must be >= 0, got {cfg.bio.sparsity_weight}")
    for key in ("log_freq", "eval_freq", "save_freq", "max_bad_steps", "eval_batches", "eval_max_new_tokens"):
        need(getattr(cfg.monitor, key) >= 1, f"monitor.{key}", f"must be >= 1, got {getattr(cfg.monitor, key)}")
    need(cfg.monitor.eval_samples >= 0, "monitor.eval_samples", f"must be >= 0 (0: no generation eval), got {cfg.monitor.eval_samples}")
    need(cfg.monitor.best_metric in ("overall", "val_loss"), "monitor.best_metric",
         f"must be overall or val_loss, got {cfg.monitor.best_metric!r}")
    need(len(cfg.curriculum.stages) >= 1, "curriculum.stages", "needs at least one stage")
    for i, stage in enumerate(cfg.curriculum.stages):
        key = f"curriculum.stages[{i}]"
        need(stage.iters >= 1, f"{key}.iters", f"must be >= 1, got {stage.iters}")
        for task, w in stage.weights.items():
            need(task in TASKS, f"{key}.weights.{task}", f"unknown task (tasks: {', '.join(TASKS)})")
            need(w >= 0, f"{key}.weights.{task}", f"must be >= 0, got {w}")
        need(sum(stage.weights.values()) > 0, f"{key}.weights", "needs a positive weight")
    return cfg


# --------------------------------------------------------------------------------------- schedule
class ScheduledStage(typing.NamedTuple):
    """A curriculum stage placed on the run's steps: steps first..last (1-based, inclusive)."""

    name: str
    first: int
    last: int
    weights: dict  # {task: weight}


def stage_schedule(cfg: Config) -> list:
    """[ScheduledStage], 1-based inclusive steps covering 1..max_iters.

    The stages' iters are scaled proportionally so they add up to training.max_iters (the guide's
    10000 split 2000/3000/3000/2000 becomes 8/12/12/8 for --max-iters 40). Every stage keeps at least
    one step while max_iters allows.
    """
    stages = cfg.curriculum.stages
    if not cfg.curriculum.enabled:
        last = stages[-1]
        return [ScheduledStage(last.name or "multi_task", 1, cfg.training.max_iters, dict(last.weights))]
    total, n = sum(s.iters for s in stages), cfg.training.max_iters
    out, cum, prev_end = [], 0, 0
    for i, s in enumerate(stages):
        cum += s.iters
        end = round(n * cum / total)
        end = min(n, max(end, prev_end + 1)) if i < len(stages) - 1 else n
        if end > prev_end:
            name = s.name or (STAGE_NAMES[i] if i < len(STAGE_NAMES) else f"stage{i + 1}")
            out.append(ScheduledStage(name, prev_end + 1, end, dict(s.weights)))
        prev_end = end
    return out


# ------------------------------------------------------------------------------------------ loading
def config_path(name_or_path: str) -> str:
    if os.path.isdir(name_or_path):
        raise ConfigError(f"config file {name_or_path!r} is a directory: give a YAML file or a tier "
                          f"({', '.join(TIERS)})")
    if name_or_path.endswith((".yaml", ".yml")) or os.path.sep in name_or_path or os.path.isfile(name_or_path):
        if not os.path.isfile(name_or_path):
            raise ConfigError(f"config file {name_or_path!r} does not exist")
        return name_or_path
    path = os.path.join(CONFIG_DIR, f"{name_or_path}.yaml")
    if not os.path.isfile(path):
        names = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))
        raise ConfigError(f"no config named {name_or_path!r} (tiers: {', '.join(names)}; or give a .yaml path)")
    return path


def load_yaml(path: str):
    """The parsed YAML of ``path`` ({} when empty); a ConfigError when it is not UTF-8 text or not YAML."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except UnicodeDecodeError as e:  # a binary file, a checkpoint say
        raise ConfigError(f"not a YAML file: byte {e.object[e.start]:#04x} at offset {e.start} is not "
                          f"UTF-8 text (a checkpoint goes to --resume, not --config)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}") from None


def load_config(name_or_path: Optional[str] = "tiny", overrides=(), base: Optional[dict] = None) -> Config:
    """Typed defaults <- ``base`` (a saved config dict) <- the YAML file <- ``overrides``.

    overrides: ``"section.key=value"`` strings or ``(key, value)`` pairs.
    """
    cfg = Config()
    if base is not None:
        apply_dict(cfg, base, "checkpoint config")
    if name_or_path:
        path = config_path(name_or_path)
        try:
            apply_dict(cfg, load_yaml(path), "top level")
        except ConfigError as e:  # every error of the file names it
            raise ConfigError(f"{path}: {e}") from None
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        set_value(cfg, key, value)
    return validate(cfg)
