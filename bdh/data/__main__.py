"""`python -m bdh.data prepare | sources`: build the curriculum data, or list where it comes from."""
import argparse
import logging
import sys

from .prepare import DEFAULT_SOURCES, DEFAULT_VAL_FRACTION, STARTER, STARTER_DIR, PrepareError, prepare
from .records import DEFAULT_MAX_BYTES
from .sources import SOURCES

PREPARE_HELP = f"""\
Fetch the curriculum datasets, convert every row to the record format, validate, dedupe, and write
train/val splits per task with a manifest (source, origin, licence, counts, sha256 of each file).

Each source is read from the Hugging Face hub with `datasets.load_dataset` when the `datasets`
package is installed (pip install datasets) and the hub is reachable; otherwise from local files in
LOCAL_DIR/<source>/ (`python -m bdh.data sources` lists the files each one reads); otherwise it is
reported as unreachable, with the reasons, and the rest are prepared anyway. The bundled starter
set ("{STARTER}", real data from PyPI packages, in {STARTER_DIR}) is always local.

Output: OUT/<task>/train.jsonl, OUT/<task>/val.jsonl, OUT/manifest.json. OUT is replaced as a whole,
and only once everything is written (an existing OUT must be empty or a prepared directory); with no
records at all, nothing is written and the exit status is 1. Rows that cannot be used (malformed,
wrong field types, bytes that are not UTF-8, ...) are skipped and counted per reason.
To train on it, point the trainer's data directory at OUT; without one it uses the starter set.

examples:
  python -m bdh.data prepare                                  # the hub datasets reachable, plus the starter set
  python -m bdh.data prepare --sources gsm8k nl2bash --max-per-task 5000
  python -m bdh.data prepare --offline --local-dir ~/datasets   # no hub: local files and the starter set
"""


def print_sources() -> None:
    for source in SOURCES.values():
        hub = f"{source.hub.id}" + (f" ({source.hub.config})" if source.hub and source.hub.config else "") if source.hub else "-"
        print(f"{source.name} [{source.task}]")
        print(f"  hub: {hub}\n  licence: {source.licence}{'' if source.shippable else ' (never bundled)'}")
        print(f"  local: <local-dir>/{source.name}/ with {source.local_files}\n  credit: {source.credit}")
    print(f"{STARTER} [all tasks]\n  the bundled starter set in {STARTER_DIR} (see its manifest.json)")


def print_summary(manifest: dict, out_dir: str) -> None:
    for source in manifest["sources"]:
        skipped = ", ".join(f"{k}: {v}" for k, v in source["skipped"].items()) or "none"
        print(f"  {source['name']:<14} {source['records']:>8} records  from {source['origin']}  (skipped: {skipped})")
    for task, counts in manifest["tasks"].items():
        print(f"  {task:<17} train {counts['train']:>8}   val {counts['val']:>6}")
    if manifest["unreachable"]:
        print("Could not reach:")
        for name, reason in manifest["unreachable"].items():
            print(f"  {name}: {reason}")
    print(f"Wrote {out_dir} (manifest.json lists sources, licences and file hashes).")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bdh.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="fetch, convert, split and write the curriculum data",
                            description=PREPARE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/curriculum", help="output directory (default: %(default)s)")
    p.add_argument("--sources", nargs="+", default=list(DEFAULT_SOURCES), metavar="NAME",
                   help=f"sources to use, from: {', '.join([*SOURCES, STARTER])} "
                        f"(default: the hub datasets and the starter set: {' '.join(DEFAULT_SOURCES)})")
    p.add_argument("--max-per-task", type=int, default=None, metavar="N",
                   help="at most N records per task, shared between its sources (default: no limit)")
    p.add_argument("--local-dir", default="data/raw", help="where local copies live: LOCAL_DIR/<source>/ (default: %(default)s)")
    p.add_argument("--offline", action="store_true", help="do not try the hub (also: HF_DATASETS_OFFLINE=1)")
    p.add_argument("--cache-dir", default=None, help="the `datasets` cache directory (default: its own)")
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, help="share of each task held out (default: %(default)s)")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help="skip records longer than this many bytes, prompt + target (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    commands.add_parser("sources", help="list the sources: hub ids, licences, local file layouts")
    args = parser.parse_args(argv)

    if args.command == "sources":
        print_sources()
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        manifest = prepare(args.out, args.sources, local_dir=args.local_dir, max_per_task=args.max_per_task,
                           val_fraction=args.val_fraction, max_bytes=args.max_bytes, offline=args.offline,
                           cache_dir=args.cache_dir, progress=not args.no_progress)
    except ValueError as e:  # a bad argument, found before any data is read: the subcommand's usage
        p.error(str(e))
    except (PrepareError, OSError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 1
    print_summary(manifest, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
