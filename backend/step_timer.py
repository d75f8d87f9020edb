"""Per-phase step timings that never wait for the device: host clocks on the CPU, CUDA events on a
GPU (recorded in the stream, read only when the loop syncs anyway, every few steps)."""
from __future__ import annotations

import time

import torch

PHASES = ("render", "prior", "backward")


class StepTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list[list] = []     # marks of steps not yet converted to seconds
        self.seconds: dict[str, list[float]] = {phase: [] for phase in (*PHASES, "step")}

    def mark(self):
        """A point in time: a recorded CUDA event, or the host clock."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def add(self, marks: list) -> None:
        """One step's marks: start, then the end of each phase."""
        self.pending.append(marks)

    def collect(self) -> None:
        """Turn the pending marks into seconds (on a GPU this waits for the last of them)."""
        if self.cuda and self.pending:
            self.pending[-1][-1].synchronize()
        between = (lambda a, b: a.elapsed_time(b) / 1000.0) if self.cuda else (lambda a, b: b - a)  # noqa: E731
        for marks in self.pending:
            for phase, start, end in zip(PHASES, marks, marks[1:]):
                self.seconds[phase].append(between(start, end))
            self.seconds["step"].append(between(marks[0], marks[-1]))
        self.pending = []
