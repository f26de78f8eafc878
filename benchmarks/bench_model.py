"""Model benchmarks: the Hatching model's training step with this project's ops against the same model with
the pure-PyTorch reference ops, generation's time per new byte at a short and a long context, and per tier
(GPU) the peak memory and tokens/s of a training step beside the trainer's ``--dry-run`` prediction.

==================  ===================================================================================
train_step          one training step as bdh.train takes it (forward, byte cross-entropy + sparsity loss,
                    backward, gradient clipping, AdamW), on a batch [B, T] of the starter set (the tier's B, T).
                    ``ops``: "bdh" (``lif.backend=null``: the package picks, cpp on CPU) or "reference".
                    CPU: the tiny tier (full) or a 2-layer D=32 model on [4, 32] (smoke); subnormals
                    flushed as the trainer does. extra_info: tokens_per_s, kernel_share (the bdh:: ops' share of the step, from
                    the torch profiler; "bdh" only).
generate            ``model(byte, state=state)`` from the recurrent state after ``context`` bytes: the cost
                    of one new byte (bdh.generate); and ``recompute``, a forward of the whole context (what
                    each new byte would cost without the state). Full: the tiny tier, contexts 64 and
                    1024; smoke: the small model, contexts 8 and 32.
tier_gpu            per tier on a GPU: one step with the micro-batch the trainer would pick, in its dtype;
                    peak ``max_memory_allocated``, tokens/s, and ``predict_peak_bytes`` beside them.
==================  ===================================================================================

``test_model_goals`` prints issue 8's model goals; ``python benchmarks/bench_model.py bench.json`` prints the
Markdown tables of a JSON written with ``--benchmark-json``.
"""
import time

import pytest
import torch

from bdh.config import TIERS, load_config
from bdh.data import CurriculumSampler, collate, load_splits
from bdh.evaluate import token_losses
from bdh.model import Hatching
from bdh.train import choose_micro_batch, predict_peak_bytes, resolve_dtype
from bdh_kernels.cpu import flush_denormal
from goals import print_goals, verdict
from report import load_cases, report_main

SMOKE_MODEL = ["model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.mlp_internal_dim_multiplier=4",
               "training.batch_size=4", "training.max_seq_len=32"]
FULL_CONTEXTS, SMOKE_CONTEXTS = (64, 1024), (8, 32)
DECODE_STEPS = 8  # new bytes per timed call of the generate case
RESULTS = {}  # (case, variant) -> {"median_s": float, **info}


def config(full, *overrides):
    return load_config("tiny", ([] if full else SMOKE_MODEL) + list(overrides))


def random_bytes(batch, length, device, seed=0):
    return torch.randint(1, 256, (batch, length), generator=torch.Generator().manual_seed(seed)).to(device)


def training_step(model, cfg, inputs, targets, optimizer, autocast=None):
    """One step of bdh.train's loop (one micro-batch), returning nothing: the work is what is timed."""
    with autocast or torch.autocast(inputs.device.type, enabled=False):
        out = model(inputs)
    losses = token_losses(out.logits, targets)
    loss = losses.mean() + model.sparsity_loss(out.rates)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def setup_step(cfg, device, batch):
    """A fresh model and optimizer, and one batch of the bundled starter set (all tasks, equal weights)
    as the trainer collates it: real text, so the firing rates and the padding are those of training."""
    torch.manual_seed(0)
    model = Hatching(cfg).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.training.learning_rate, fused=device.type == "cuda")
    splits = load_splits()
    sampler = CurriculumSampler({t: s.train for t, s in splits.items()}, batch, {t: 1.0 for t in splits}, seed=0)
    records = collate(sampler.next_batch(), cfg.training.max_seq_len)
    return model, optimizer, records["inputs"].to(device), records["targets"].to(device)


def kernel_share(step, device_type):
    """Fraction of one step's time spent inside the bdh:: ops (profiler totals; device time on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        step()
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.key.startswith("bdh::")]
    if device_type == "cuda":
        return sum(e.device_time_total for e in events) / 1e6 / wall
    return sum(e.cpu_time_total for e in events) / 1e6 / wall


def run(benchmark, full, step, rounds=None):
    """Time ``step`` (timed rounds in full mode, one call in smoke mode) and return its median in seconds."""
    step()  # warm-up: first calls, allocator, kernel compilation
    if full:
        benchmark.pedantic(step, rounds=rounds or 5, iterations=1, warmup_rounds=1)
    else:
        benchmark.pedantic(step, rounds=1, iterations=1)
    stats = getattr(benchmark, "stats", None)
    return stats.stats.median if stats is not None else None


# -------------------------------------------------------------------------------------------- cases
@pytest.mark.parametrize("ops", ["bdh", "reference"])
def test_train_step_cpu(benchmark, full, ops):
    cfg = config(full, f"lif.backend={'null' if ops == 'bdh' else 'reference'}")
    model, optimizer, inputs, targets = setup_step(cfg, torch.device("cpu"), cfg.training.batch_size)
    flush = flush_denormal(True)  # as bdh.train does on CPU (bdh_kernels/cpu.py says why)
    try:
        def step():
            training_step(model, cfg, inputs, targets, optimizer)

        median = run(benchmark, full, step, rounds=10)
        share = kernel_share(step, "cpu") if ops == "bdh" else None
    finally:
        if flush:
            flush_denormal(False)
    tokens = inputs.numel()
    benchmark.group = "model train_step cpu float32"
    info = {"model_case": "train_step", "variant": ops, "device": "cpu", "full": full, "tokens": tokens,
            "batch": list(inputs.shape), "tokens_per_s": tokens / median if median else None, "kernel_share": share}
    benchmark.extra_info.update(info)
    if median:
        RESULTS[("train_step", ops)] = {"median_s": median, **info}


@pytest.mark.parametrize("mode", ["generate", "recompute"])
@pytest.mark.parametrize("context_index", [0, 1], ids=["short", "long"])
def test_generate_cpu(benchmark, full, mode, context_index):
    context = (FULL_CONTEXTS if full else SMOKE_CONTEXTS)[context_index]
    cfg = config(full)
    torch.manual_seed(0)
    model = Hatching(cfg).eval()
    prompt = random_bytes(1, context, "cpu")
    new = random_bytes(1, DECODE_STEPS, "cpu", seed=1)
    with torch.no_grad():
        state = model(prompt, return_state=True).state

        def decode():  # DECODE_STEPS new bytes, each from the state after the bytes before it
            s = state
            for i in range(DECODE_STEPS):
                s = model(new[:, i:i + 1], state=s, return_state=True).state

        def recompute():
            model(prompt)

        median = run(benchmark, full, decode if mode == "generate" else recompute, rounds=10)
    per_byte = median / DECODE_STEPS if (median and mode == "generate") else median
    benchmark.group = f"model generate cpu float32 ({mode})"
    info = {"model_case": mode, "variant": f"context {context}", "context": context, "device": "cpu",
            "full": full, "per_byte_s": per_byte}
    benchmark.extra_info.update(info)
    if median:
        RESULTS[(mode, context_index)] = {"median_s": median, **info}


@pytest.mark.parametrize("tier", TIERS)
def test_tier_gpu(benchmark, full, tier):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the per-tier memory and throughput run only where torch.cuda.is_available()")
    device = torch.device("cuda")
    cfg = load_config(tier) if full else config(False)
    dtype = resolve_dtype(cfg.training.dtype, device)
    micro, predicted, budget = choose_micro_batch(cfg, cfg.training.batch_size, dtype, device)
    model, optimizer, inputs, targets = setup_step(cfg, device, micro)
    model.activation_checkpointing = cfg.training.activation_checkpointing
    autocast = torch.autocast("cuda", dtype=dtype) if dtype != torch.float32 else None

    def step():
        training_step(model, cfg, inputs, targets, optimizer, autocast)
        torch.cuda.synchronize()

    step()
    torch.cuda.reset_peak_memory_stats()
    step()
    peak = torch.cuda.max_memory_allocated()
    median = run(benchmark, full, step, rounds=5)
    share = kernel_share(step, "cuda")
    benchmark.group = "model tiers gpu"
    info = {"model_case": "tier", "variant": tier, "device": torch.cuda.get_device_name(0), "full": full,
            "dtype": str(dtype).replace("torch.", ""), "micro_batch": micro, "seq_len": cfg.training.max_seq_len,
            "peak_bytes": peak, "predicted_bytes": predict_peak_bytes(cfg, micro, dtype), "budget_bytes": budget,
            "tokens_per_s": inputs.numel() / median if median else None, "kernel_share": share}
    benchmark.extra_info.update(info)
    if median:
        RESULTS[("tier", tier)] = {"median_s": median, **info}


# -------------------------------------------------------------------------------------------- goals
def goal_lines(results, full):
    """Issue 8's model goals (and issue 7's flat generation cost), as pass / falls-short lines."""
    lines = []
    bdh, ref = results.get(("train_step", "bdh")), results.get(("train_step", "reference"))
    if bdh and ref:
        lines.append(f"cpu train step: {bdh['median_s'] * 1e3:.0f} ms with bdh ops ({bdh['tokens_per_s']:.0f} tok/s), "
                     f"{ref['median_s'] * 1e3:.0f} ms with the reference ops: {ref['median_s'] / bdh['median_s']:.2f}x; "
                     f"bdh:: ops take {bdh['kernel_share']:.1%} of the step")
    short, long_ = results.get(("generate", 0)), results.get(("generate", 1))
    if short and long_:
        r = long_["per_byte_s"] / short["per_byte_s"]
        lines.append(f"{verdict(r <= 1.25, full)}: generation per new byte {short['per_byte_s'] * 1e3:.2f} ms at context "
                     f"{short['context']}, {long_['per_byte_s'] * 1e3:.2f} ms at {long_['context']}: ratio {r:.2f}; "
                     "goal <= 1.25 (flat)")
        rec = results.get(("recompute", 1))
        if rec:
            lines.append(f"recomputing the {rec['context']}-byte context instead would take {rec['median_s'] * 1e3:.1f} ms "
                         f"per byte ({rec['median_s'] / long_['per_byte_s']:.0f}x)")
    medium = results.get(("tier", "medium"))
    if medium:
        lines.append(f"{verdict(medium['peak_bytes'] <= 16 * 2**30, full)}: medium tier step peak "
                     f"{medium['peak_bytes'] / 2**30:.2f} GiB (micro-batch {medium['micro_batch']}); goal <= 16 GiB")
    for tier in TIERS:
        t = results.get(("tier", tier))
        if t:
            lines.append(f"{verdict(t['kernel_share'] <= 0.15, full)}: {tier} tier on {t['device']}: bdh:: ops take "
                         f"{t['kernel_share']:.1%} of the step; goal <= 15%")
    return lines


def test_model_goals(full, capsys):
    """Prints the goal lines of the cases measured above in this run."""
    print_goals(capsys, "model goals (issues 7, 8)", goal_lines(RESULTS, full), full, "no model case measured in this run")


# --------------------------------------------------------------------------------------------- report
CASE_FIELDS = {  # per model_case, the extra_info fields that the tables and the goal lines read
    "train_step": ("variant", "batch", "tokens_per_s", "kernel_share"),
    "generate": ("context", "per_byte_s"),
    "recompute": ("context", "per_byte_s"),
    "tier": ("variant", "device", "dtype", "micro_batch", "seq_len", "peak_bytes", "predicted_bytes", "tokens_per_s",
             "kernel_share"),
}


def case_row(info, stats) -> dict:
    """The fields of a model case that the tables and the goal lines read."""
    names = ("model_case", "full") + CASE_FIELDS.get(info["model_case"], ())
    return {**{name: info[name] for name in names}, "median_s": stats["median"], "rounds": stats["rounds"]}


def markdown(path):
    """The Markdown tables of the model cases in a pytest-benchmark JSON."""
    _, cases = load_cases(path, "model_case", "model", case_row)
    if not cases:
        return f"no model benchmark in {path}"
    results = {}
    out = []
    steps = [r for r in cases if r["model_case"] == "train_step"]
    if steps:
        out += ["| train step (cpu, fp32) | batch | median ms | tokens/s | bdh:: ops share | rounds |", "|---|---|---|---|---|---|"]
        for r in steps:
            share = f"{r['kernel_share']:.1%}" if r["kernel_share"] is not None else "–"
            out.append(f"| {r['variant']} ops | {r['batch']} | {r['median_s'] * 1e3:.0f} | {r['tokens_per_s']:.0f} | "
                       f"{share} | {r['rounds']} |")
            results[("train_step", r["variant"])] = r
        out.append("")
    gens = [r for r in cases if r["model_case"] in ("generate", "recompute")]
    if gens:
        out += ["| generation (cpu, fp32) | context | ms per new byte | rounds |", "|---|---|---|---|"]
        contexts = sorted({r["context"] for r in gens})
        for r in gens:
            out.append(f"| {'from the state' if r['model_case'] == 'generate' else 'recompute the context'} | "
                       f"{r['context']} | {r['per_byte_s'] * 1e3:.2f} | {r['rounds']} |")
            results[(r["model_case"], contexts.index(r["context"]))] = r
        out.append("")
    tiers = [r for r in cases if r["model_case"] == "tier"]
    if tiers:
        out += ["| tier | device | dtype | micro-batch x seq | peak GiB | predicted GiB | tokens/s | bdh:: ops share |",
                "|---|---|---|---|---|---|---|---|"]
        for r in tiers:
            out.append(f"| {r['variant']} | {r['device']} | {r['dtype']} | {r['micro_batch']} x {r['seq_len']} | "
                       f"{r['peak_bytes'] / 2**30:.2f} | {r['predicted_bytes'] / 2**30:.2f} | {r['tokens_per_s']:.0f} | "
                       f"{r['kernel_share']:.1%} |")
            results[("tier", r["variant"])] = r
        out.append("")
    return "\n".join(out + goal_lines(results, all(r["full"] for r in cases)))


if __name__ == "__main__":
    report_main("Markdown tables of the model cases in a pytest-benchmark JSON.", markdown)
