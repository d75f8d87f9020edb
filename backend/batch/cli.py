"""`python -m backend batch SPEC --out DIR`: the command line of batch generation (docs/batch.md).

The run flags (--preset, --steps, --cfg, --prior, --set ...) are generate's own (backend/cli_flags.py,
through argparse's parents=) and act as defaults for every row of SPEC.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.schema import METHODS as METHOD_SCHEMA

from ..errors import UserError


def add_batch_parser(sub, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The batch command; `parents` are generate's run flags (backend/cli_flags.py), which act as defaults
    for every row of SPEC."""
    batch = sub.add_parser("batch", parents=parents, help="many prompts x seeds x methods, in-process or on a Ray cluster",
                           description="Run every row of SPEC (a text file with one prompt per line, or JSON/CSV "
                                       "rows of generate settings) for each seed and method. Each item writes what "
                                       "`generate` writes into OUT/<item>/; OUT/batch.json indexes them. "
                                       "See docs/batch.md.")
    batch.add_argument("spec", type=Path, metavar="SPEC", help="prompts (.txt), or rows of settings (.json, .csv)")
    batch.add_argument("--out", type=Path, default=Path("results/batch"), help="batch folder (default results/batch)")
    batch.add_argument("--seeds", type=int, default=1, metavar="N",
                       help="seeds per row: --seed, --seed+1, ... (a row's own seed pins it)")
    batch.add_argument("--methods", metavar="A,B", help="methods per row, e.g. sds,fsd (a row's own method pins it)")
    batch.add_argument("--ray", metavar="ADDRESS", help="'local' starts a local Ray; an address joins a cluster "
                                                        "(`ray start --head` prints it); default: in-process")
    batch.add_argument("--workers", type=int, metavar="N", help="Ray workers (default: one per GPU, else 1)")
    batch.add_argument("--keep-best", type=int, default=0, metavar="K",
                       help="mark the K best seeds per prompt as kept (ground-truth IoU on the shapes prior, "
                            "the prior's denoising loss otherwise); nothing is deleted")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    return batch


def batch_plan(args):
    """(items, invalid rows) from SPEC and the flags; UserError for bad flags."""
    from ..cli_flags import generate_settings
    from .spec import expand, read_spec

    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: give 1 or more seeds per row")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers}: give 1 or more workers")
    if args.workers and args.workers > 1 and not args.ray:
        raise UserError(f"--workers {args.workers} needs Ray (in-process runs one item at a time): add --ray local")
    if args.keep_best < 0:
        raise UserError(f"--keep-best {args.keep_best}: give how many seeds to keep per prompt (1 or more)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else [args.method]
    unknown = [m for m in methods if m not in METHOD_SCHEMA]
    if unknown or not methods:
        raise UserError(f"--methods {args.methods!r}: use a comma-separated list of {', '.join(METHOD_SCHEMA)}")
    settings = {k: v for k, v in generate_settings(args).items() if v is not None}
    seed = settings.pop("seed")
    settings.pop("method")
    return expand(read_spec(args.spec), settings, args.preset, methods, [seed + i for i in range(args.seeds)])


def cmd_batch(args) -> int:
    from ..cli_flags import CtrlC
    from .run import BatchOptions, run_batch

    items, invalid = batch_plan(args)
    for bad in invalid:
        print(f"error: {args.spec} {bad.error}", file=sys.stderr)
    if not items:
        raise UserError(f"no valid rows in {args.spec}: fix the rows named above")
    stop = CtrlC()
    stop.install()
    options = BatchOptions(out=args.out, ray=args.ray, workers=args.workers, keep_best=args.keep_best,
                           show_progress=not args.no_progress)
    try:
        index = run_batch(items, invalid, options, stop_requested=stop, meta={"spec": str(args.spec)})
    except KeyboardInterrupt:  # the second Ctrl-C: batch.json is written, the last checkpoints are kept
        print(f"Aborted. Index: {args.out / 'batch.json'}. Run the same command again to resume.")
        return 130
    counts = index.counts()
    reused = sum(bool(r.get("reused")) for r in index.items.values())
    print(f"{counts['done']} of {len(index.items)} items done ({reused} from an earlier run), "
          f"{counts['failed']} failed, "
          f"{counts['invalid']} invalid rows, {counts['pending']} left. Index: {args.out / 'batch.json'}")
    if "contact_sheet" in index.meta:
        print(f"Contact sheet: {args.out / index.meta['contact_sheet']}")
    if args.keep_best:
        for record in index.items.values():
            if record.get("kept"):
                print(f"  kept (rank {record['rank']}) {record['id']}")
    if stop.requested or counts["pending"]:
        print("Stopped. Run the same command again to resume.")
        return 130
    return 1 if counts["failed"] or counts["invalid"] else 0
