"""The source distribution holds what building a wheel from it needs: the build backend named in
pyproject.toml, every C++/CUDA source and header, and the packages' data files; and the tests and
benchmarks whole, so that they run from it."""
import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tracked(folder):
    return {f"{folder}/{name}" for name in os.listdir(os.path.join(ROOT, folder))}


def tree(folder):
    """Every file under folder (compiled Python aside), as paths from the repository's root."""
    return {os.path.relpath(os.path.join(d, f), ROOT) for d, _, names in os.walk(os.path.join(ROOT, folder))
            for f in names if "__pycache__" not in d and not f.endswith(".pyc")}


def test_the_sdist_can_build_a_wheel(tmp_path):
    build = subprocess.run([sys.executable, "-c", f"import build_backend; print(build_backend.build_sdist({str(tmp_path)!r}))"],
                           cwd=ROOT, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    name = build.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as sdist:
        prefix = name[:-len(".tar.gz")] + "/"
        files = {m.name[len(prefix):] for m in sdist.getmembers() if m.isfile()}
    assert {"build_backend.py", "pyproject.toml", "setup.py", "README.md"} <= files
    assert tracked("csrc") <= files
    assert tracked("bdh/configs") <= files
    assert "bdh/data/starter/manifest.json" in files
    assert any(f.startswith("bdh/data/starter/") and f.endswith(".jsonl.gz") for f in files)
    assert tree("tests") <= files and tree("benchmarks") <= files
