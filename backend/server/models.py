"""Which priors a client may ask for: built-in priors by name, Hugging Face Hub ids, and model
folders under the model roots the server was started with (the Hugging Face cache and each
`serve --models DIR`). Anything else is refused with one message that is the same whether the path
exists, is a file, or is a folder, so the `prior` field cannot be used to probe the server's files.

A Hub id is loaded by the job process from an empty working folder (backend/runner/), so an id can
never be read as a path relative to the server's working folder either.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from shared.protocol import ProtocolError

# A Hub repo id: "name" or "owner/name" (huggingface_hub's rule, simplified), and no "--" (cache names).
_HUB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?")


def builtin_priors() -> tuple[str, ...]:
    """The names load_prior handles itself (backend.priors.BUILTIN_PRIORS)."""
    from ..priors import BUILTIN_PRIORS

    return tuple(BUILTIN_PRIORS)


def hf_cache() -> Path:
    """The Hugging Face Hub cache (HF_HUB_CACHE / HF_HOME respected, as huggingface_hub does)."""
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:
        home = os.environ.get("HF_HOME", Path("~/.cache/huggingface").expanduser())
        return Path(os.environ.get("HF_HUB_CACHE", Path(home) / "hub"))


class ModelRoots:
    def __init__(self, folders: Iterable[str | Path] = (), include_hf_cache: bool = True):
        self.folders = [Path(folder).expanduser().resolve() for folder in folders]  # names are looked up here
        self.roots = self.folders + ([hf_cache().expanduser().resolve()] if include_hf_cache else [])

    def resolve(self, name: str) -> str:
        """The prior the worker loads for a request's `prior`: a built-in name, a Hub id, or the real
        path of a folder inside a model root. ProtocolError (field "prior") otherwise."""
        if name in builtin_priors():
            return name
        path, folder = Path(name), None
        if path.is_absolute():
            folder = self._inside(path)
        elif _plain(name):  # an entry under a --models root wins over a Hub id of the same spelling
            entries = [root / name for root in self.folders if os.path.lexists(root / name)]
            if entries:
                folder = self._inside(entries[0])
            elif _HUB_ID.fullmatch(name):
                return name
        if folder is None:
            raise ProtocolError(
                f"prior {name!r} is not a built-in prior ({', '.join(builtin_priors())}), a Hugging Face model id "
                "such as stabilityai/stable-diffusion-2-1-base, or a model folder the backend offers: ask its "
                "operator which models it has (serve --models DIR adds a folder of models)", "prior")
        return str(folder)

    def _inside(self, path: Path) -> Path | None:
        real = path.resolve()  # links inside a root (the HF cache's snapshots) may point within it
        if any(real.is_relative_to(root) for root in self.roots) and real.is_dir():
            return real
        return None


def _plain(name: str) -> bool:
    """No path tricks: no "..", "~", leading ".", backslash or "--" (Hub cache folder names)."""
    return not (name.startswith((".", "~")) or ".." in name or "\\" in name or "--" in name or ":" in name)
