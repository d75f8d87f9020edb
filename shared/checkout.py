"""Where a Distill3D checkout keeps its virtual environment: build.py creates it there, and the add-on's
"Start backend" runs the backend with its Python when no other Python is set (blender_addon/launcher.py).

Standard library only and no imports from the project: build.py imports it with the system python3
before any venv exists.
"""
from __future__ import annotations

import os
from pathlib import Path

VENV_DIR = ".venv"  # beside backend/ and build.py


def venv_python(root: str | os.PathLike, windows: bool = os.name == "nt") -> Path:
    """The interpreter of the checkout `root`'s venv, whether or not it exists yet: the venv module
    puts it in Scripts\\python.exe on Windows and bin/python elsewhere."""
    return Path(root, VENV_DIR, *(("Scripts", "python.exe") if windows else ("bin", "python")))
