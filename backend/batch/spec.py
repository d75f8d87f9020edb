"""A batch spec: rows of generate settings from a text, JSON or CSV file, expanded into items.

- text (any other suffix): one prompt per line; blank lines and lines starting with # are skipped.
- .json: a list of objects, each any generate field ({"prompt": ..., "method": ..., "seed": ..., "preset": ...}).
- .csv: a header line of field names, then one row per line; empty cells are left out.

A row becomes one item per (method, seed): a row's own "method"/"seed" pins it, otherwise the
batch's --methods and --seeds expand it. Each item is checked with the same validation as a single
`generate` (shared.protocol's request schema, then the GenerateConfig, which checks itself when
built, and the method's own option checks), once, here; a bad row becomes an `Invalid` naming the row and the field, and the others still run.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.protocol import REQUEST_FIELDS, ProtocolError, validate_request

from ..config import GenerateConfig, with_preset
from ..errors import UserError


@dataclass
class Row:
    number: int               # the line in a text/CSV file (the header is line 1), the position in a JSON list
    values: dict[str, Any]    # generate fields as written


@dataclass
class Item:
    id: str                   # also the item's folder name under the batch's --out
    row: int
    config: GenerateConfig


@dataclass
class Invalid:
    row: int
    error: str                # "row 3: cfg = 5000 is out of range: ..."
    field: str | None
    values: dict[str, Any]


def read_spec(path: Path) -> list[Row]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise UserError(f"cannot read the batch spec {path} ({error.strerror}): "
                        "give a text, JSON or CSV file") from None
    suffix = path.suffix.lower()
    rows = _json_rows(text, path) if suffix == ".json" else _csv_rows(text) if suffix == ".csv" else _text_rows(text)
    if not rows:
        raise UserError(f"the batch spec {path} has no rows: write one prompt per line (or a JSON list / CSV rows)")
    return rows


def _text_rows(text: str) -> list[Row]:
    return [Row(n, {"prompt": line.strip()}) for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def _json_rows(text: str, path: Path) -> list[Row]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"the batch spec {path} is not valid JSON ({error.msg} at line {error.lineno}): "
                        'write a list of objects like [{"prompt": "a red cube", "seed": 1}]') from None
    if not isinstance(data, list):
        raise UserError(f"the batch spec {path} must be a JSON list of objects, one per row")
    # a bare string is a prompt; anything else that is not an object fails validation with its row number
    return [Row(n, row if isinstance(row, dict) else {"prompt": row}) for n, row in enumerate(data, 1)]


def _csv_rows(text: str) -> list[Row]:
    reader = csv.DictReader(text.splitlines())
    rows = []
    for record in reader:
        values = {key.strip(): _cell(key.strip(), cell) for key, cell in record.items()
                  if key is not None and cell is not None and cell.strip() != ""}
        if values:
            rows.append(Row(reader.line_num, values))
    return rows


def _cell(name: str, cell: str) -> Any:
    """A CSV cell as the schema wants it: strings stay as written, other fields are read as JSON
    (numbers, true/false, null, {...}) so the validation can name a bad one."""
    spec = REQUEST_FIELDS.get(name)
    if spec is None or spec.kind == "str":
        return cell.strip()
    try:
        return json.loads(cell)
    except json.JSONDecodeError:
        return cell.strip()


def expand(rows: list[Row], defaults: dict[str, Any], preset: str, methods: list[str],
           seeds: list[int]) -> tuple[list[Item], list[Invalid]]:
    """Items (unique by settings, in spec order) and the rows that failed validation.
    `defaults` are the batch's generate flags; a row's own values win over them."""
    items: dict[str, Item] = {}
    invalid: list[Invalid] = []
    for row in rows:
        try:
            for item in _row_items(row, defaults, preset, methods, seeds):
                items.setdefault(item.id, item)
        except (ProtocolError, UserError) as error:
            message = error.message if isinstance(error, ProtocolError) else str(error)
            invalid.append(Invalid(row.number, f"row {row.number}: {message}", getattr(error, "field", None),
                                   row.values))
    return list(items.values()), invalid


def _row_items(row: Row, defaults: dict[str, Any], preset: str, methods: list[str], seeds: list[int]) -> list[Item]:
    from ..methods import make_method

    values = validate_request(row.values)  # unknown fields and bad types, named
    row_preset = values.pop("preset", preset)
    row_methods = [values.pop("method")] if "method" in values else methods
    row_seeds = [values.pop("seed")] if "seed" in values else seeds
    items = []
    for method in row_methods:
        for seed in row_seeds:
            config = with_preset(row_preset, **{**defaults, **values, "method": method, "seed": seed})
            make_method(config.method, cfg=config.cfg, options=config.method_options, max_steps=config.steps,
                        seed=config.seed)  # the method's own option checks, before any work starts
            items.append(Item(item_id(config), row.number, config))
    return items


def item_id(config: GenerateConfig) -> str:
    """A readable folder name that is the same for the same settings on every run (so a rerun finds
    its finished and half-done items) and differs when any setting differs."""
    settings = json.dumps(config.to_dict(), sort_keys=True, default=str)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", config.prompt.lower()).strip("-")[:40].strip("-") or "item"
    return f"{slug}-{config.method}-s{config.seed}-{digest}"
