"""Generation: greedy bytes from the recurrent state equal those of recomputing the whole context,
seeded sampling, argument errors, and the CLI on a real checkpoint."""
import math
import os

import pytest
import torch

import bdh.generate
from bdh.data import EOS
from bdh.generate import generate_batch, generate_bytes, generate_text, main, next_bytes, prefill
from bdh.model import LayerState, Output, State

from train_cases import small_model

PROMPT = "User: List the files here.\nAssistant: ".encode()


def greedy_by_recompute(model, prompt: bytes, n: int) -> list:
    """The slow definition: run the whole text again for every new byte, take the argmax."""
    ids = list(prompt)
    new = []
    for _ in range(n):
        byte = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        new.append(byte)
        if byte == EOS:
            break
        ids.append(byte)
    return new


@pytest.mark.parametrize("overrides", [(), ("lif.enabled=false",), ("stdp.enabled=false",), ("lif.tau_syn=3.0",)],
                         ids=["default", "relu", "no_stdp", "tau_syn"])
def test_greedy_generation_equals_recomputing_the_context(overrides):
    model = small_model(*overrides).double().eval()
    fast = list(generate_bytes(model, PROMPT, max_new_tokens=24, temperature=0))
    assert fast == greedy_by_recompute(model, PROMPT, 24)
    assert len(fast) == 24 or fast[-1] == EOS


@pytest.mark.parametrize("overrides", [(), ("lif.enabled=false",), ("stdp.enabled=false",), ("lif.tau_syn=3.0",)],
                         ids=["default", "relu", "no_stdp", "tau_syn"])
def test_batch_generation_equals_each_prompt_alone(overrides):
    """Prompts of different lengths, prefilled alone and decoded together (per-text RoPE positions)."""
    model = small_model(*overrides).double().eval()
    prompts = [PROMPT, b"x", PROMPT[:17], b"User: hi\nAssistant: "]
    together = generate_batch(model, prompts, max_new_tokens=12)
    assert together == [list(generate_bytes(model, p, max_new_tokens=12)) for p in prompts]


def test_batch_generation_arguments():
    model = small_model()
    assert generate_batch(model, []) == []
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        generate_batch(model, [b"a", b""])
    with pytest.raises(ValueError, match="top_k"):
        generate_batch(model, [b"a"], top_k=0)
    stops = generate_batch(Always(EOS), [b"a", b"bc"], max_new_tokens=5)
    assert stops == [[EOS], [EOS]]
    assert generate_batch(Always(ord("z")), [b"a", b"bc"], max_new_tokens=3) == [[122] * 3, [122] * 3]


class Always(torch.nn.Module):
    """A stand-in model whose every logit row puts ``byte`` first."""

    def __init__(self, byte):
        super().__init__()
        self.byte = byte
        self.unused = torch.nn.Parameter(torch.zeros(1))  # generate_bytes reads the device off a parameter

    def forward(self, idx, state=None, return_state=False):
        logits = torch.zeros(*idx.shape, 256)
        logits[..., self.byte] = 1.0
        kv = torch.zeros(idx.shape[0], 1, 1, 1)  # a one-layer State with nothing but a batch size
        return Output(logits, None, None, State(idx.shape[1], (LayerState(None, None, None, kv),)))


def test_generation_stops_after_eos_and_text_drops_it():
    assert list(generate_bytes(Always(EOS), b"x", max_new_tokens=10)) == [EOS]
    assert generate_text(Always(ord("a")), "x", max_new_tokens=5) == "aaaaa"
    assert generate_text(Always(EOS), "x", max_new_tokens=5) == ""


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy():
    model = small_model().eval()
    a = list(generate_bytes(model, PROMPT, 20, temperature=1.0, seed=7))
    b = list(generate_bytes(model, PROMPT, 20, temperature=1.0, seed=7))
    assert a == b
    greedy = list(generate_bytes(model, PROMPT, 20, temperature=0))
    assert list(generate_bytes(model, PROMPT, 20, temperature=1.0, top_k=1, seed=3)) == greedy
    samples = {tuple(generate_bytes(model, PROMPT, 20, temperature=2.0, seed=s)) for s in range(4)}
    assert len(samples) > 1  # a random init at temperature 2 is close to uniform: seeds differ


@pytest.mark.parametrize("chunk", [1, 7, 16])
def test_a_prompt_fed_in_chunks_gives_the_one_chunk_result(monkeypatch, chunk):
    model = small_model().double().eval()
    whole_logits, whole_state = prefill(model, PROMPT, "cpu")
    whole = list(generate_bytes(model, PROMPT, max_new_tokens=16))
    monkeypatch.setattr(bdh.generate, "PROMPT_CHUNK", chunk)
    lengths, forward = [], model.forward
    monkeypatch.setattr(model, "forward", lambda idx, **kwargs: lengths.append(idx.shape[1]) or forward(idx, **kwargs))
    logits, state = prefill(model, PROMPT, "cpu")
    assert max(lengths) == chunk  # the attention's [T, T] stays chunk x chunk
    assert state.position == whole_state.position == len(PROMPT)
    torch.testing.assert_close(logits, whole_logits)
    assert list(generate_bytes(model, PROMPT, max_new_tokens=16)) == whole
    assert generate_batch(model, [PROMPT, b"x"], max_new_tokens=8)[0] == whole[:8]


@pytest.mark.parametrize("temperature", [1e-40, 1e-300, 5e-324])
def test_a_tiny_temperature_samples_the_likeliest_byte(temperature):
    logits = torch.tensor([[0.0, 3.0, 1.0], [-5.0, -6.0, -4.5]])
    assert next_bytes(logits, temperature, None, torch.Generator().manual_seed(0)).tolist() == [1, 2]
    model = small_model().eval()
    greedy = list(generate_bytes(model, PROMPT, 12, temperature=0))
    assert list(generate_bytes(model, PROMPT, 12, temperature=temperature, seed=1)) == greedy


def test_top_k_samples_only_the_k_likeliest():
    logits = torch.arange(256, dtype=torch.float32).expand(200, 256)  # 200 texts, the same logits
    gen = torch.Generator().manual_seed(0)
    drawn = set(next_bytes(logits, 5.0, 3, gen).tolist())
    assert drawn == {253, 254, 255}


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": -1.0}, "temperature"), ({"temperature": math.nan}, "temperature"),
    ({"temperature": math.inf}, "temperature must be a finite number"),
    ({"top_k": 0}, "top_k"), ({"top_k": 257}, "top_k"), ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"max_new_tokens": None}, "max_new_tokens"), ({"max_new_tokens": 2.5}, "max_new_tokens"),
])
def test_bad_sampling_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        list(generate_bytes(small_model(), PROMPT, **kwargs))


def test_empty_prompt_is_refused():
    with pytest.raises(ValueError, match="prompt is empty"):
        list(generate_bytes(small_model(), b"", 4))


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_help_quotes_the_prompt_example_as_bash_reads_it(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "$'User: List the files here.\\nAssistant: '" in " ".join(capsys.readouterr().out.split())


def test_cli_writes_the_prompt_and_its_continuation(micro_checkpoint, capsys):
    argv = ["--checkpoint", micro_checkpoint, "--prompt", "User: hi\nAssistant: ", "--max-new-tokens", "12",
            "--seed", "1"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("User: hi\nAssistant: ") and first.endswith("\n")
    assert main(argv) == 0
    assert capsys.readouterr().out == first  # seeded


def test_cli_takes_a_prompt_that_is_not_utf8(micro_checkpoint, capsys):
    prompt = os.fsdecode(b"User: caf\xe9\nAssistant: ")  # latin-1 bytes, as a shell passes them
    assert main(["--checkpoint", micro_checkpoint, "--prompt", prompt, "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("User: caf\ufffd\nAssistant: ")


@pytest.mark.parametrize("case", ["missing", "corrupt", "temperature", "device", "empty_prompt"])
def test_cli_errors_are_clear(micro_checkpoint, tmp_path, capsys, case):
    argv = {"missing": ["--checkpoint", str(tmp_path / "nope.pt"), "--prompt", "x"],
            "corrupt": ["--checkpoint", str(tmp_path / "bad.pt"), "--prompt", "x"],
            "temperature": ["--checkpoint", micro_checkpoint, "--prompt", "x", "--temperature", "-0.5"],
            "device": ["--checkpoint", micro_checkpoint, "--prompt", "x", "--device", "tpu9"],
            "empty_prompt": ["--checkpoint", micro_checkpoint, "--prompt", ""]}[case]
    (tmp_path / "bad.pt").write_bytes(open(micro_checkpoint, "rb").read()[:1000])
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert {"missing": "does not exist", "corrupt": "truncated or corrupt", "temperature": "temperature",
            "device": "--device", "empty_prompt": "--prompt is empty"}[case] in err
