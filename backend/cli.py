"""Command line: python -m backend {generate, image, compare, export, batch, serve} ...

Bad input prints one line naming the problem and the fix, and exits with code 2 (no traceback).
Ctrl-C during `generate` stops after the current step with a checkpoint written; resume with --resume.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from shared.schema import DEFAULT_METHOD, DEFAULT_PRESET, METHODS, PRESETS

from .config import with_preset
from .errors import UserError
from .runtime import tune_allocator

EXIT_USAGE = 2


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


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help='what to make, e.g. "a red cube"')
    parser.add_argument("--method", choices=list(METHODS), default=DEFAULT_METHOD,
                        help="score distillation method (see `generate --help`)")
    parser.add_argument("--prior", default="shapes",
                        help="'shapes' (built-in exact prior) or a Stable Diffusion hub id or local folder")
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


def schema_help() -> str:
    """The methods with their --set options and the presets, for `generate --help` (shared/schema.py)."""
    lines = ["methods (--method; options with --set NAME=VALUE):"]
    for name, method in METHODS.items():
        lines.append(f"  {name:9s}{method.description}")
        defaults = (f"{key}={'null' if option.default is None else option.default}"
                    for key, option in method.options.items())
        lines.append("           options: " + ", ".join(defaults))
    lines.append("presets (--preset):")
    lines += [f"  {name:9s}{preset.description}" for name, preset in PRESETS.items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description="Distill3D: text to textured 3D asset")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="text -> NeRF -> textured mesh", epilog=schema_help(),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(gen)
    gen.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                     help=f"quality preset (default {DEFAULT_PRESET}; see below)")
    gen.add_argument("--steps", type=int)
    gen.add_argument("--resolution", type=int, help="render size in pixels (square)")
    gen.add_argument("--out", type=Path, default=Path("results/run"), help="output folder")
    gen.add_argument("--preview-every", type=int)
    gen.add_argument("--checkpoint-every", type=int)
    gen.add_argument("--no-export", action="store_true", help="skip the mesh export at the end")
    gen.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")

    img = sub.add_parser("image", help="distill a single 2D image (the papers' 2D experiment)")
    add_common(img)
    img.add_argument("--steps", type=int, default=500)
    img.add_argument("--resolution", type=int, default=64)
    img.add_argument("--out", type=Path, default=Path("results/image.png"))

    cmp_ = sub.add_parser("compare", help="every method and DDIM from one seed, side by side (2D)")
    add_common(cmp_)
    cmp_.add_argument("--steps", type=int, default=500)
    cmp_.add_argument("--resolution", type=int, default=64)
    cmp_.add_argument("--out", type=Path, default=Path("results/compare.png"))

    exp = sub.add_parser("export", help="re-export the mesh from a checkpoint with other settings")
    exp.add_argument("checkpoint", type=Path, help="a run's checkpoint.pt (or its folder)")
    exp.add_argument("--out", type=Path, help="output folder (default: the checkpoint's folder)")
    # every default: the setting the run was trained with (its saved config)
    exp.add_argument("--resolution", type=int, help="density grid size (default: the run's)")
    exp.add_argument("--threshold", type=float, help="density level of the surface (default: the run's)")
    exp.add_argument("--faces", type=int, help="face budget (default: the run's)")
    exp.add_argument("--texture-size", type=int, help="texture width = height in pixels (default: the run's)")
    exp.add_argument("--smooth", action=argparse.BooleanOptionalAction,
                     help="Taubin-smooth before decimating (default: the run's)")

    sub.add_parser("serve", help="run the ZeroMQ server for the Blender add-on (see --help there)", add_help=False)

    from .batch.cli import add_batch_parser  # many prompts x seeds x methods, in-process or on Ray
    add_batch_parser(sub, gen)
    return parser


def options_of(args) -> dict:
    return dict(parse_option(o) for o in args.options)


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


def generate_settings(args) -> dict:
    """GenerateConfig fields from the generate flags (None: not given). `batch` uses it too."""
    return dict(method=args.method, prior=args.prior, cfg=args.cfg, seed=args.seed, negative=args.negative,
                method_options=options_of(args) or None, device=args.device, offline=args.offline or None,
                steps=args.steps, prior_options=dict(parse_option(o) for o in args.prior_options) or None,
                resolution=args.resolution, preview_every=args.preview_every,
                checkpoint_every=args.checkpoint_every, export_mesh=False if args.no_export else None)


def cmd_generate(args) -> int:
    from .progress import ProgressPrinter
    from .train import train

    config = with_preset(args.preset, prompt=args.prompt, **generate_settings(args))
    stop = CtrlC()
    stop.install()
    with ProgressPrinter() as printer:
        result = train(config, args.out, on_event=printer, should_stop=stop, resume=args.resume)
    if result.stopped:
        print(f"Stopped. Checkpoint: {result.outputs['checkpoint.pt']}\n"
              f"Resume with: python -m backend generate {json.dumps(args.prompt)} --out {args.out} --resume")
        return 130
    print(f"Done in {result.report['total_time_s']:.1f} s. Results in {result.out_dir}/:")
    for name, path in sorted(result.outputs.items()):
        print(f"  {name:14s} {path}")
    truth = result.report.get("ground_truth")
    if truth:
        print(f"  ground truth: {truth['object']}: volume IoU {truth['volume_iou']:.3f}, "
              f"albedo error {truth['albedo_error']:.3f}")
    return 0


def cmd_image(args) -> int:
    from .image import distill_prompt_image
    from .pictures import save_png

    image = distill_prompt_image(args.prompt, method=args.method, prior=args.prior, steps=args.steps,
                                 resolution=args.resolution, cfg=args.cfg, seed=args.seed,
                                 negative=args.negative, options=options_of(args), device=args.device)
    print(f"Wrote {save_png(image, args.out)}")
    return 0


def cmd_compare(args) -> int:
    from .image import compare_methods
    from .pictures import save_png

    picture = compare_methods(args.prompt, prior=args.prior, steps=args.steps, resolution=args.resolution,
                              seed=args.seed, device=args.device)
    print(f"Wrote {save_png(picture, args.out)}")
    return 0


def cmd_export(args) -> int:
    from .checkpoint import load_model
    from .export import export_mesh, settings_of

    model, config = load_model(args.checkpoint)
    ckpt = args.checkpoint if args.checkpoint.is_dir() else args.checkpoint.parent
    out = args.out or ckpt
    flags = dict(resolution=args.resolution, threshold=args.threshold, face_budget=args.faces,
                 texture_size=args.texture_size, smooth=args.smooth)
    settings = {**settings_of(config), **{k: v for k, v in flags.items() if v is not None}}
    result = export_mesh(model, out, **settings)
    for name, path in sorted(result.paths.items()):
        print(f"  {name:12s} {path}")
    print(json.dumps(result.stats, indent=1, default=str))
    return 0


def cmd_batch(args) -> int:
    from .batch.cli import cmd_batch as run

    return run(args)


COMMANDS = {"generate": cmd_generate, "image": cmd_image, "compare": cmd_compare, "export": cmd_export,
            "batch": cmd_batch}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    tune_allocator()
    if argv[:1] == ["serve"]:  # the server parses its own flags
        from .server import serve_from_args
        return serve_from_args(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
