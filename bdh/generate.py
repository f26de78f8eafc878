"""Sample from a Hatching checkpoint: ``python -m bdh.generate --checkpoint PATH --prompt "User: ..."``.

The prompt goes through the model in chunks of ``PROMPT_CHUNK`` bytes, each forward starting from the
recurrent :class:`bdh.model.State` the one before returned (LIF membranes, STDP traces, the attention's
running key-value sum): attention within one forward is quadratic in its length, so a long prompt in
one piece would cost memory and time quadratic in its length, while chunks give the same logits
(:func:`prefill`). Each new byte is then one forward of that single byte from the state. Nothing grows
with the context, so the time per new byte is the same at context 64 and 1024
(benchmarks/bench_model.py checks the ratio), and the logits equal those of recomputing the whole
context (tests/test_generate.py).
:func:`generate_batch` answers several prompts together: each is run alone, their states are stacked
(each text keeps its own position), and the batch then writes one byte per step (bdh.evaluate uses it).

Sampling: ``temperature`` 0 is greedy (argmax, no randomness); otherwise (a finite temperature) bytes
are drawn from softmax(logits / temperature) restricted to the ``top_k`` most likely (all 256 when
None), with a seeded generator; the softmax is taken in float64 after subtracting the largest logit,
so that a tiny temperature gives a near-greedy draw, not an overflow. Generation stops after the EOS
byte (0, which ends every training target) or after ``max_new_tokens`` bytes; the CLI streams the
text to stdout as it is written.
"""
import argparse
import codecs
import math
import os
import sys
from typing import Iterator, List, Optional, Sequence

import torch

from bdh.checkpoint import CheckpointError, load_model, resolve_device
from bdh.data import EOS, VOCAB_SIZE, decode
from bdh.model import stack_states

# Prompt bytes per forward when a prompt is fed to the model (see the module docstring).
PROMPT_CHUNK = 512


def next_bytes(logits: torch.Tensor, temperature: float, top_k: Optional[int], generator) -> torch.Tensor:
    """[B] byte ids from the [B, 256] logits of each text's last position (see the module docstring)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.double()
    logits = (logits - logits.max(-1, keepdim=True).values) / temperature  # the largest is 0, never inf
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]


def sampling_generator(device, temperature: float, seed: Optional[int]):
    """The torch.Generator that sampling draws from (None for greedy decoding, which draws nothing)."""
    if temperature == 0:
        return None
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    return generator


def check_sampling(max_new_tokens: int, temperature: float, top_k: Optional[int]) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not (temperature >= 0 and math.isfinite(temperature)):  # also refuses NaN
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k is not None and not 1 <= top_k <= VOCAB_SIZE:
        raise ValueError(f"top_k must be in 1..{VOCAB_SIZE} (or None for all), got {top_k}")


def prefill(model, prompt: bytes, device) -> tuple:
    """(logits [1, 256] after the prompt's last byte, the State after it): the prompt fed PROMPT_CHUNK
    bytes per forward, each from the State the one before returned."""
    ids = torch.tensor([list(prompt)], device=device)
    state = None
    for start in range(0, ids.shape[1], PROMPT_CHUNK):
        out = model(ids[:, start:start + PROMPT_CHUNK], state=state, return_state=True)
        state = out.state
    return out.logits[:, -1], state


@torch.no_grad()
def decode_steps(model, prompts: Sequence[bytes], max_new_tokens: int, temperature: float, top_k: Optional[int],
                 seed: Optional[int]) -> Iterator[List[int]]:
    """The decoding loop: each step's new byte id for every prompt, until all have written EOS or
    max_new_tokens steps have passed (after a text's EOS its row goes on with bytes nobody reads).

    Each prompt is run alone (its own length, no padding; :func:`prefill`), their States are stacked
    (:func:`bdh.model.stack_states`), and then the batch takes one forward per step.
    """
    model.eval()
    device = next(model.parameters()).device
    generator = sampling_generator(device, temperature, seed)
    logits, states = zip(*(prefill(model, p, device) for p in prompts))
    logits, state = torch.cat(logits), stack_states(states)
    done = [False] * len(prompts)
    for step in range(max_new_tokens):
        chosen = next_bytes(logits, temperature, top_k, generator)
        ids = chosen.tolist()
        yield ids
        done = [d or byte == EOS for d, byte in zip(done, ids)]
        if all(done) or step == max_new_tokens - 1:
            return
        out = model(chosen[:, None], state=state, return_state=True)
        logits, state = out.logits[:, -1], out.state


def generate_bytes(model, prompt: bytes, max_new_tokens: int = 256, temperature: float = 0.0,
                   top_k: Optional[int] = None, seed: Optional[int] = None) -> Iterator[int]:
    """Yield the new byte ids one at a time (the EOS byte last, if the model writes it).

    model: a :class:`bdh.model.Hatching` (put in eval mode here); prompt: its bytes, at least one.
    """
    check_sampling(max_new_tokens, temperature, top_k)
    if not prompt:
        raise ValueError("prompt is empty: the model needs at least one byte to condition on")
    for ids in decode_steps(model, [prompt], max_new_tokens, temperature, top_k, seed):
        yield ids[0]


def generate_batch(model, prompts: Sequence[bytes], max_new_tokens: int = 256, temperature: float = 0.0,
                   top_k: Optional[int] = None, seed: Optional[int] = None) -> List[List[int]]:
    """The new byte ids for each prompt (the EOS byte last, where written), decoded together
    (:func:`decode_steps`): greedy answers equal :func:`generate_bytes`' for each prompt."""
    check_sampling(max_new_tokens, temperature, top_k)
    for n, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompts[{n}] is empty: the model needs at least one byte to condition on")
    new = [[] for _ in prompts]
    if prompts:
        for ids in decode_steps(model, prompts, max_new_tokens, temperature, top_k, seed):
            for row, byte in zip(new, ids):
                if not row or row[-1] != EOS:
                    row.append(byte)
    return new


def generate_text(model, prompt: str, **kwargs) -> str:
    """The text the model writes after ``prompt`` (UTF-8, the EOS byte dropped, invalid bytes replaced)."""
    return decode(generate_bytes(model, prompt.encode(), **kwargs))


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bdh.generate",
        description="Write text with a Hatching checkpoint, streaming it to stdout. The context is carried "
                    "as a recurrent state, so each new byte costs the same however long the text is.")
    p.add_argument("--checkpoint", required=True, help="a hatching_*.pt written by python -m bdh.train")
    p.add_argument("--prompt", required=True,
                   help="the text to continue, in the training format, e.g. $'User: List the files here.\\nAssistant: ' "
                        "(bash's $'...' turns \\n into a newline)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="bytes to write at most (default: 256)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy; default 0.8")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest bytes (default: all)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling (default: a fresh one)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_sampling(args.max_new_tokens, args.temperature, args.top_k)
        if not args.prompt:
            raise ValueError("--prompt is empty")
        model, _, _ = load_model(args.checkpoint, resolve_device(args.device, "--device"))
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    prompt = os.fsencode(args.prompt)  # the bytes as given, even when they are not valid UTF-8
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span several bytes
    sys.stdout.write(decoder.decode(prompt))
    for byte in generate_bytes(model, prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed):
        if byte != EOS:
            sys.stdout.write(decoder.decode(bytes([byte])))
            sys.stdout.flush()
    sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
