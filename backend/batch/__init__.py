"""Batch generation: many prompts x seeds x methods, one after another in-process or spread over a
Ray cluster, each item written exactly as a single `generate` writes it (docs/batch.md).

spec.py reads and validates the rows (each a GenerateConfig, valid by construction), item_runner.py
runs items (also as a Ray actor), ray_pool.py places item runners on Ray (through the Ray connection
and prior cache of backend/runner/, which the server shares), index.py keeps DIR/batch.json, select.py ranks seeds, sheet.py draws the contact
sheet, run.py ties them together and cli.py is the `batch` subcommand.
"""
from __future__ import annotations

from .run import BatchOptions, run_batch
from .spec import expand, read_spec

__all__ = ["BatchOptions", "expand", "read_spec", "run_batch"]
