"""The flags that several commands share, declared once and reused through argparse's `parents=`:
`method_flags` (generate, texture, image, compare, batch) and `run_flags` (generate and batch), and
how they become GenerateConfig settings. The settings' own types and ranges are shared/schema.py's."""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from shared.schema import DEFAULT_METHOD, DEFAULT_PRESET, METHODS, PRESETS, RUN_FIELDS

from .errors import UserError


def method_flags() -> argparse.ArgumentParser:
    """The method, the prior and the seed: what every distillation command takes."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--method", choices=list(METHODS), default=DEFAULT_METHOD,
                        help="score distillation method (see `generate --help`)")
    parser.add_argument("--prior", default=RUN_FIELDS["prior"].default, help=RUN_FIELDS["prior"].help)
    parser.add_argument("--cfg", type=float,
                        help="guidance scale (default: the prior's if it sets one, 1 for shapes, else the method's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--negative", help="negative prompt (default: NFSD's for nfsd, none otherwise)")
    parser.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option, e.g. --set weighting=uniform (repeatable)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--offline", action="store_true", help="never touch the network to load a model")
    parser.add_argument("--prior-option", dest="prior_options", action="append", default=[], metavar="KEY=VALUE",
                        help="a Stable Diffusion option, e.g. --prior-option perp_neg=true (repeatable)")
    return parser


def run_flags() -> argparse.ArgumentParser:
    """method_flags plus what a 3D run takes: the preset and its overrides, and the starting shape."""
    parser = argparse.ArgumentParser(add_help=False, parents=[method_flags()])
    parser.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                        help=f"quality preset (default {DEFAULT_PRESET}; see below)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--resolution", type=int, help="render size in pixels (square)")
    parser.add_argument("--coarse-fraction", type=float,
                        help=f"{RUN_FIELDS['coarse_fraction'].help} (draft: {PRESETS['draft'].settings['coarse_fraction']})")
    parser.add_argument("--preview-every", type=int)
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--no-export", action="store_true", help="skip the mesh export at the end")
    parser.add_argument("--shape", type=Path, metavar="MESH",
                        help="start from this mesh (.glb/.obj) instead of the density blob, guided towards it")
    parser.add_argument("--shape-strength", type=float,
                        help="weight of the guide loss towards --shape (default 1; 0: start from it, no guide)")
    parser.add_argument("--fit", choices=RUN_FIELDS["fit"].choices,
                        help="auto (default): centre and scale --shape into the field; none: keep its coordinates")
    return parser


def parse_option(text: str) -> tuple[str, object]:
    """--set key=value: value parsed as JSON when it can be (numbers, true/false, null), else a string."""
    if "=" not in text:
        raise UserError(f"--set {text!r} is not key=value: write e.g. --set weighting=uniform")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def method_options(args) -> dict:
    """The --set KEY=VALUE flags as a dict."""
    return dict(parse_option(o) for o in args.options)


def generate_settings(args) -> dict:
    """GenerateConfig fields from the flags (None: not given). generate, texture and batch use it."""
    return dict(method=args.method, prior=args.prior, cfg=args.cfg, seed=args.seed, negative=args.negative,
                method_options=method_options(args) or None, device=args.device,
                offline=args.offline or None, steps=args.steps,
                prior_options=dict(parse_option(o) for o in args.prior_options) or None,
                resolution=args.resolution, coarse_fraction=getattr(args, "coarse_fraction", None),
                preview_every=args.preview_every,
                checkpoint_every=args.checkpoint_every, export_mesh=False if args.no_export else None,
                **shape_settings(args))


def shape_settings(args) -> dict:
    """--shape MESH [--shape-strength S] [--fit F]: a run that starts from the mesh (backend/shape_guide.py)."""
    shape = getattr(args, "shape", None)
    return dict(source="shape" if shape else None, source_mesh=str(shape) if shape else None,
                shape_strength=getattr(args, "shape_strength", None), fit=getattr(args, "fit", None))


class CtrlC:
    """First Ctrl-C asks the loop to stop after this step (checkpoint written); a second one aborts."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def install(self) -> None:
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print("\nStopping after this step (Ctrl-C again to abort at once)...", file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, handler)
