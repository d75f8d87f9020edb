"""The terminal progress line: a tqdm bar with step, t, loss, it/s and ETA, plus warnings."""
from __future__ import annotations

from tqdm import tqdm

from .events import Event, Finished, Log, Progress


class ProgressPrinter:
    """An on_event callback that draws a tqdm bar on stderr."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, Progress):
            if self.bar is None:
                # initial = the step a resumed run starts from, so the ETA counts only what is left
                self.bar = tqdm(total=event.total, initial=event.step - 1, unit="step", dynamic_ncols=True)
            self.bar.set_postfix_str(f"t={event.t} loss={event.loss:.4g}", refresh=False)
            self.bar.update(event.step - self.bar.n)
        elif isinstance(event, Log) and event.level != "info":
            (self.bar.write if self.bar else print)(f"{event.level}: {event.message}")
        elif isinstance(event, Finished) and self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "ProgressPrinter":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
