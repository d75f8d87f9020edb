"""Command line: python -m backend {generate, texture, image, compare, export, batch, serve} ...

Bad input prints one line naming the problem and the fix, and exits with code 2 (no traceback).
Ctrl-C during `generate` stops after the current step with a checkpoint written; resume with --resume.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.schema import DEFAULT_PRESET, METHODS, PRESETS

from .cli_flags import CtrlC, generate_settings, method_flags, method_options, run_flags
from .config import with_preset
from .errors import UserError
from .runtime import tune_allocator
from .texture import TEXTURE_RESOLUTION_CPU, TEXTURE_RESOLUTION_GPU

EXIT_USAGE = 2


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
                         formatter_class=argparse.RawDescriptionHelpFormatter, parents=[run_flags()])
    gen.add_argument("prompt", help='what to make, e.g. "a red cube"')
    gen.add_argument("--out", type=Path, default=Path("results/run"), help="output folder")
    gen.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")

    add_texture_parser(sub)

    img = sub.add_parser("image", help="distill a single 2D image (the papers' 2D experiment)",
                         parents=[method_flags()])
    img.add_argument("prompt", help='what to make, e.g. "a red cube"')
    img.add_argument("--steps", type=int, default=500)
    img.add_argument("--resolution", type=int, default=64)
    img.add_argument("--out", type=Path, default=Path("results/image.png"))

    cmp_ = sub.add_parser("compare", help="every method and DDIM from one seed, side by side (2D)",
                          parents=[method_flags()])
    cmp_.add_argument("prompt", help='what to make, e.g. "a red cube"')
    cmp_.add_argument("--steps", type=int, default=500)
    cmp_.add_argument("--resolution", type=int, default=64)
    cmp_.add_argument("--out", type=Path, default=Path("results/compare.png"))

    exp = sub.add_parser("export", help="re-export the mesh from a checkpoint with other settings")
    exp.add_argument("checkpoint", type=Path, help="a run's checkpoint.pt (or its folder)")
    exp.add_argument("--out", type=Path, help="output folder (default: the checkpoint's folder)")
    # every default: the setting the run was trained with (its saved config)
    exp.add_argument("--resolution", type=int, help="density grid size (default: the run's)")
    exp.add_argument("--threshold", type=_level, help="density level of the surface, or auto: chosen from the "
                     "field's renders (docs/export.md); default: the run's setting, auto when it set none")
    exp.add_argument("--faces", type=int, help="face budget (default: the run's)")
    exp.add_argument("--texture-size", type=int, help="texture width = height in pixels (default: the run's)")
    exp.add_argument("--smooth", action=argparse.BooleanOptionalAction,
                     help="Taubin-smooth before decimating (default: the run's)")
    exp.add_argument("--denoise", action=argparse.BooleanOptionalAction,
                     help="feature-preserving smoothing: flat faces flat, edges sharp (default: the run's)")
    exp.add_argument("--normal-map", action=argparse.BooleanOptionalAction,
                     help="bake the full-resolution surface into a tangent-space normal map for the decimated "
                          "mesh, e.g. with --faces 5000 (default: the run's)")

    sub.add_parser("serve", help="run the ZeroMQ server for the Blender add-on (see --help there)", add_help=False)

    from .batch.cli import add_batch_parser  # many prompts x seeds x methods, in-process or on Ray
    add_batch_parser(sub, parents=[run_flags()])
    return parser


def add_texture_parser(sub) -> None:
    """`texture MESH PROMPT`: paint an existing mesh, geometry kept (docs/selection.md, "Texture mode")."""
    tex = sub.add_parser("texture", help="paint an existing mesh (.glb, .gltf, .obj) from text; the geometry is kept",
                         epilog=schema_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
                         parents=[method_flags()])
    tex.add_argument("mesh", type=Path, help="the mesh to texture, in glTF's frame (+Y up) like every mesh file")
    tex.add_argument("prompt", help='what to paint, e.g. "a red cube"')
    tex.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                     help=f"quality preset (default {DEFAULT_PRESET}); its render size is replaced by --resolution")
    tex.add_argument("--steps", type=int)
    tex.add_argument("--resolution", type=int,
                     help=f"render size in pixels (default {TEXTURE_RESOLUTION_CPU} on the CPU, "
                          f"{TEXTURE_RESOLUTION_GPU} on a GPU: one field query per pixel, so larger than the NeRF's)")
    tex.add_argument("--fit", choices=["auto", "none"], default="auto",
                     help="auto: centre and scale the mesh to the cameras (undone on the way out); none: its own "
                          "coordinates")
    tex.add_argument("--texture-size", type=int, help="texture width = height in pixels (default: the preset's)")
    tex.add_argument("--out", type=Path, default=Path("results/texture"), help="output folder")
    tex.add_argument("--preview-every", type=int)
    tex.add_argument("--checkpoint-every", type=int)
    tex.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    tex.set_defaults(no_export=False)


def cmd_generate(args) -> int:
    from .train import train

    config = with_preset(args.preset, prompt=args.prompt, **generate_settings(args))
    result = run_with_progress(train, config, args)
    if result.stopped:
        return stopped(result, f"generate {json.dumps(args.prompt)} --out {args.out} --resume")
    truth = done(result)
    if truth:
        print(f"  ground truth: {truth['object']}: volume IoU {truth['volume_iou']:.3f}, "
              f"albedo error {truth['albedo_error']:.3f}")
        surface = truth.get("surface")
        if surface:
            print(f"  mesh surface: F-score {surface['fscore']:.3f} at {surface['tau']:g}, accuracy "
                  f"{surface['accuracy']:.4f}, normal error {surface['normal_error_mean']:.1f} deg")
    return 0


def run_with_progress(run, config, args):
    """A run (train or train_texture) with a progress line, Ctrl-C stopping it after the current step."""
    from .progress import ProgressPrinter

    stop = CtrlC()
    stop.install()
    with ProgressPrinter() as printer:
        return run(config, args.out, on_event=printer, should_stop=stop, resume=args.resume)


def stopped(result, resume_arguments: str) -> int:
    print(f"Stopped. Checkpoint: {result.outputs['checkpoint.pt']}\n"
          f"Resume with: python -m backend {resume_arguments}")
    return 130


def done(result) -> dict | None:
    """Print where the results are; return the report's ground truth (shapes prior) if any."""
    print(f"Done in {result.report['total_time_s']:.1f} s. Results in {result.out_dir}/:")
    for name, path in sorted(result.outputs.items()):
        print(f"  {name:14s} {path}")
    return result.report.get("ground_truth")


def cmd_texture(args) -> int:
    from .devices import resolve_device
    from .texture.train_texture import train_texture

    resolution = args.resolution or (TEXTURE_RESOLUTION_CPU if resolve_device(args.device).type == "cpu"
                                     else TEXTURE_RESOLUTION_GPU)
    config = with_preset(args.preset, prompt=args.prompt, **{
        **generate_settings(args), "resolution": resolution, "source": "texture", "source_mesh": str(args.mesh),
        "fit": args.fit, "texture_size": args.texture_size})
    result = run_with_progress(train_texture, config, args)
    if result.stopped:
        return stopped(result, f"texture {args.mesh} {json.dumps(args.prompt)} --out {args.out} --resume")
    truth = done(result)
    if truth:
        print(f"  ground truth: {truth['object']}: texture error {truth['texture_error']:.3f} "
              f"({truth['texture_error_seen']:.3f} where a training camera sees it)")
    return 0


def cmd_image(args) -> int:
    from .image import distill_prompt_image
    from .pictures import save_png

    image = distill_prompt_image(args.prompt, method=args.method, prior=args.prior, steps=args.steps,
                                 resolution=args.resolution, cfg=args.cfg, seed=args.seed,
                                 negative=args.negative, options=method_options(args), device=args.device)
    print(f"Wrote {save_png(image, args.out)}")
    return 0


def cmd_compare(args) -> int:
    from .image import compare_methods
    from .pictures import save_png

    picture = compare_methods(args.prompt, prior=args.prior, steps=args.steps, resolution=args.resolution,
                              seed=args.seed, device=args.device)
    print(f"Wrote {save_png(picture, args.out)}")
    return 0


def _level(text: str) -> float | str:
    """--threshold: a density (a number) or "auto"."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a density level: give a number, e.g. 20, "
                                         "or auto") from None


def cmd_export(args) -> int:
    from .checkpoint import load_model
    from .export import export_mesh, settings_of

    model, config = load_model(args.checkpoint)
    ckpt = args.checkpoint if args.checkpoint.is_dir() else args.checkpoint.parent
    out = args.out or ckpt
    flags = dict(resolution=args.resolution, threshold=args.threshold, face_budget=args.faces,
                 texture_size=args.texture_size, smooth=args.smooth, denoise=args.denoise,
                 normal_map=args.normal_map)
    settings = {**settings_of(config), **{k: v for k, v in flags.items() if v is not None}}
    if args.threshold == "auto":   # also for a checkpoint saved with a fixed level
        settings["threshold"] = None
    result = export_mesh(model, out, **settings)
    for name, path in sorted(result.paths.items()):
        print(f"  {name:12s} {path}")
    print(json.dumps(result.stats, indent=1, default=str))
    return 0


def cmd_batch(args) -> int:
    from .batch.cli import cmd_batch as run

    return run(args)


COMMANDS = {"generate": cmd_generate, "texture": cmd_texture, "image": cmd_image, "compare": cmd_compare,
            "export": cmd_export, "batch": cmd_batch}


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
