"""Build the Blender extension zip: `python tools/build_addon.py` (what `python3 build.py addon` runs).

dist/distill3d-<version>.zip holds, at its root (the layout `blender --command extension build` makes):
  - every file of blender_addon/ (this build script lives outside it, so nothing needs excluding),
  - blender_manifest.toml with `version` from shared/version.py and `wheels` naming the bundled files,
  - shared/ copied in as a subpackage (the add-on imports `from .shared.client import Client`),
  - wheels/: pyzmq wheels, the venv's pyzmq version, for every platform the manifest lists, for
    Python 3.11 (Blender 4.2 to 5.0) and for newer Pythons (pyzmq's cp312-abi3 wheels).

Wheels are fetched once with `pip download` into dist/wheels/ (with an index.json of what was asked
for), so a rebuild is offline. Blender installs only the wheels that match its platform and Python.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "blender_addon"
SHARED = ROOT / "shared"
MANIFEST = "blender_manifest.toml"
# Written into the zip with version and wheels filled in, not copied as is.
NOT_SHIPPED = {MANIFEST}

# Blender platform name -> the pip platform tag asked for (pip also accepts older compatible tags,
# e.g. manylinux_2_26 for manylinux_2_28, universal2 for arm64).
PLATFORMS = {
    "linux-x64": "manylinux_2_28_x86_64",
    "windows-x64": "win_amd64",
    "macos-arm64": "macosx_11_0_arm64",
}
# 3.11: Blender 4.2 to 5.0. 3.13: newer Blender; pyzmq publishes cp312-abi3 wheels that cover it.
PYTHON_VERSIONS = ("3.11", "3.13")


class BuildError(Exception):
    """A build step failed; the message says what to do."""


def addon_version() -> str:
    text = (SHARED / "version.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.M)
    if not match:
        raise BuildError("shared/version.py has no __version__ = \"x.y.z\" line: add one")
    return match.group(1)


def pyzmq_version() -> str:
    try:
        return metadata.version("pyzmq")
    except metadata.PackageNotFoundError:
        raise BuildError("pyzmq is not installed in this Python: run `python3 build.py addon`, which sets up .venv") from None


def fetch_wheels(cache: Path, version: str, platforms=PLATFORMS, pythons=PYTHON_VERSIONS) -> list[Path]:
    """The pyzmq wheels for every (platform, Python), from the cache or downloaded into it."""
    cache.mkdir(parents=True, exist_ok=True)
    index_path = cache / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    wanted = []
    for platform, tag in platforms.items():
        for python in pythons:
            key = f"pyzmq=={version} {platform} {python}"
            name = index.get(key)
            if not name or not (cache / name).exists():
                name = _pip_download(cache, version, tag, python)
                index[key] = name
                index_path.write_text(json.dumps(index, indent=1, sort_keys=True))
            wanted.append(cache / name)
    return sorted(set(wanted))


def _pip_download(cache: Path, version: str, platform_tag: str, python: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
               "--only-binary=:all:", "--no-deps", "--implementation", "cp",
               "--platform", platform_tag, "--python-version", python, "-d", tmp, f"pyzmq=={version}"]
        print("+", " ".join(cmd), flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(found) != 1:
            raise BuildError(
                f"could not download the pyzmq {version} wheel for {platform_tag}, Python {python} "
                f"({done.stderr.strip()[-300:] or 'no wheel'}): connect to PyPI once, or put the wheel in {cache}")
        shutil.move(str(found[0]), cache / found[0].name)
        return found[0].name


def render_manifest(text: str, version: str, wheel_names: list[str]) -> str:
    """The source manifest with `version` and `wheels` filled in, checked by parsing it back."""
    wheels = "wheels = [\n" + "".join(f'  "./wheels/{n}",\n' for n in wheel_names) + "]"
    text, n_version = re.subn(r'^version = "[^"]*"$', f'version = "{version}"', text, count=1, flags=re.M)
    text, n_wheels = re.subn(r"^wheels = \[[^\]]*\]$", wheels, text, count=1, flags=re.M)
    if n_version != 1 or n_wheels != 1:
        raise BuildError(f"blender_addon/{MANIFEST} needs one `version = \"...\"` line and one `wheels = [...]` list")
    parsed = tomllib.loads(text)
    assert parsed["version"] == version and parsed["wheels"] == [f"./wheels/{n}" for n in wheel_names]
    return text


def _sources(folder: Path, skip: set[str]) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
                  and p.relative_to(folder).as_posix() not in skip)


def build(dist: Path) -> Path:
    version = addon_version()
    wheels = fetch_wheels(dist / "wheels", pyzmq_version())
    manifest = render_manifest((ADDON / MANIFEST).read_text(encoding="utf-8"), version, [w.name for w in wheels])
    out = dist / f"distill3d-{version}.zip"
    tmp = out.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, manifest)
        for path in _sources(ADDON, NOT_SHIPPED):
            zf.write(path, path.relative_to(ADDON).as_posix())
        for path in _sources(SHARED, set()):
            if path.suffix == ".py":
                zf.write(path, "shared/" + path.relative_to(SHARED).as_posix())
        for wheel in wheels:  # already compressed, and Blender wants them unmodified
            zf.write(wheel, f"wheels/{wheel.name}", compress_type=zipfile.ZIP_STORED)
    tmp.replace(out)  # a half-written zip never sits under the final name
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    args = parser.parse_args(argv)
    try:
        out = build(args.dist)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Built {out} ({out.stat().st_size // 1024} KiB). Install it in Blender: Edit > Preferences > "
          "Get Extensions > Install from Disk.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
