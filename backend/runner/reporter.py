"""Turns the training loop's events (backend/events.py) for one job into protocol events, at a
bounded rate: progress at most every `progress_interval_s`, previews (PNG-encoded here, in the job's
worker process, not in the server) at most every `preview_interval_s`. The newest preview is also
written to the job folder so a client that joins late can fetch it. flush() sends what the rate limit
held back. Events leave through `send(type, header_fields, *binary_frames)`."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shared.protocol import PREVIEW_NAME

from ..events import CoarseMesh, Event, Finished, Log, Preview, Progress
from ..fileio import write_atomic
from ..pictures import png_bytes

log = logging.getLogger(__name__)


def mesh_frames(mesh: CoarseMesh) -> tuple[dict[str, Any], list[bytes]]:
    """Header fields and little-endian buffers of a mesh event (layout: shared/protocol.py EVENT_FRAMES)."""
    vertices = np.ascontiguousarray(mesh.vertices, dtype="<f4").reshape(-1, 3)
    faces = np.ascontiguousarray(mesh.faces, dtype="<i4").reshape(-1, 3)
    colors = np.ascontiguousarray(mesh.colors, dtype=np.uint8).reshape(-1, 3)
    header = {"step": int(mesh.step), "vertex_count": len(vertices), "face_count": len(faces)}
    return header, [vertices.tobytes(), faces.tobytes(), colors.tobytes()]


class JobReporter:
    """The `on_event` callback handed to train() for one job."""

    def __init__(self, job_id: str, folder: Path, send: Callable[..., None], preview_interval_s: float = 0.5,
                 progress_interval_s: float = 0.1):
        self.job_id, self.folder, self.send = job_id, Path(folder), send
        self.preview_interval_s, self.progress_interval_s = preview_interval_s, progress_interval_s
        self._last_preview_at = self._last_progress_at = -float("inf")
        self._pending_preview: Preview | None = None
        self._pending_progress: dict[str, Any] | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, Progress):
            self._progress(event)
        elif isinstance(event, Preview):
            self._pending_preview = event
            if time.monotonic() - self._last_preview_at >= self.preview_interval_s:
                self._send_preview()
        elif isinstance(event, CoarseMesh):
            header, frames = mesh_frames(event)
            self.send("mesh", header, *frames)
        elif isinstance(event, Log):
            getattr(log, event.level if event.level in ("info", "warning", "error") else "info")(
                "job %s: %s", self.job_id, event.message)
            self.send("log", {"level": event.level, "message": str(event.message)})
        elif isinstance(event, Finished):
            pass  # the outputs come back as train()'s result; the server announces them after recording

    def _progress(self, event: Progress) -> None:
        fields = {"step": int(event.step), "total": int(event.total), "t": int(event.t), "loss": float(event.loss),
                  "it_per_s": float(event.it_per_s), "eta_s": float(event.eta_s)}
        self._pending_progress = fields
        if time.monotonic() - self._last_progress_at >= self.progress_interval_s:
            self._send_progress()

    def _send_progress(self) -> None:
        self.send("progress", self._pending_progress)
        self._pending_progress, self._last_progress_at = None, time.monotonic()

    def _send_preview(self) -> None:
        if self._pending_progress is not None:  # a preview never runs ahead of the step status reports
            self._send_progress()
        preview, self._pending_preview = self._pending_preview, None
        self._last_preview_at = time.monotonic()
        image = np.asarray(preview.image)
        png = png_bytes(image, compress_level=1)
        write_atomic(self.folder / PREVIEW_NAME, png)
        self.send("preview", {"step": int(preview.step), "width": int(image.shape[1]), "height": int(image.shape[0])},
                  png)

    def flush(self) -> None:
        """Send the newest progress and preview that the rate limits held back."""
        if self._pending_progress is not None:
            self._send_progress()
        if self._pending_preview is not None:
            self._send_preview()
