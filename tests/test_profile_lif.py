"""benchmarks/profile_lif.py: times and profiles a LIF forward + backward; bad arguments are usage errors."""
import importlib.util
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("profile_lif", os.path.join(HERE, "..", "benchmarks", "profile_lif.py"))
profile_lif = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profile_lif)


def test_profiles_the_op_and_reports_the_time_per_call(capsys):
    per_call = profile_lif.main(["--backend", "reference", "--shape", "40,2,8", "--calls", "2", "--rows", "50"])
    out = capsys.readouterr().out
    assert per_call > 0
    assert "lif fwd+bwd float32 [40, 2, 8] spike on cpu, backend reference:" in out
    assert "ms per call" in out
    assert "Self CPU" in out  # the profiler's table


@pytest.mark.parametrize("argv, message", [
    (["--shape", "40,x"], "--shape takes comma-separated sizes"),
    (["--shape", "40"], "--shape needs >= 2 positive sizes"),
    (["--shape", "40,0,8"], "--shape needs >= 2 positive sizes"),
    (["--calls", "0"], "must be >= 1"),
    (["--dtype", "int32"], "invalid choice"),
    (["--output", "voltage"], "invalid choice"),
    (["--backend", "bogus"], "invalid choice"),
    (["--device", "foo"], "--device takes cpu, cuda or cuda:INDEX, got 'foo'"),
    (["--device", "meta"], "--device takes cpu, cuda or cuda:INDEX, got 'meta'"),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        profile_lif.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cuda_without_a_device_says_so():
    if profile_lif.torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit, match="no CUDA device"):
        profile_lif.main(["--device", "cuda"])


def test_a_backend_that_cannot_run_on_the_device_says_why():
    with pytest.raises(SystemExit, match="--backend cuda: the cuda backend runs on CUDA tensors, got a cpu tensor"):
        profile_lif.main(["--backend", "cuda", "--device", "cpu"])
