"""Names of the Blender data the add-on makes: after the prompt, within Blender's 63-byte limit."""
from __future__ import annotations

MAX_NAME_BYTES = 63  # Blender's datablock name limit (UTF-8 bytes)


def datablock_name(text: str, suffix: str = "") -> str:
    """`text` cut (at a character boundary) so that `text + suffix` fits a datablock name."""
    text = " ".join(text.split()) or "Distill3D"
    room = MAX_NAME_BYTES - len(suffix.encode("utf-8"))
    cut = text.encode("utf-8")[:room].decode("utf-8", errors="ignore").rstrip()
    return cut + suffix


def variation_suffix(variations: int, seed: int | None) -> str:
    """" (seed 3)" when several seeds of one prompt were made together, so their names differ."""
    return f" (seed {seed})" if variations > 1 and seed is not None else ""
