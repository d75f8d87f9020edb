"""Skipping steps with non-finite gradients without asking the device every step.

Each step computes, on the device, whether the gradient and the loss are finite, and hands the
answer to Adam as `found_inf` (the fused Adam skips the whole update, moments and step count
included, when it is 1: the mechanism torch's GradScaler uses). The run length of bad steps is
counted on the device too; the loop reads it every few steps (`read`), so the run is abandoned at
the first read after MAX_BAD_STEPS bad steps in a row, never silently continued.
"""
from __future__ import annotations

import torch

MAX_BAD_STEPS = 20  # consecutive non-finite steps before the run is abandoned


class NaNGuard:
    def __init__(self, device: torch.device):
        zero = lambda: torch.zeros((), dtype=torch.int64, device=device)  # noqa: E731
        self.run, self.worst, self.skipped = zero(), zero(), zero()

    def check(self, *tensors: torch.Tensor) -> torch.Tensor:
        """found_inf for this step: 1.0 if any value of `tensors` is NaN/inf, else 0.0 (on the device)."""
        bad = ~torch.stack([torch.isfinite(t).all() for t in tensors]).all()
        self.run = (self.run + 1) * bad             # consecutive bad steps, 0 after a good one
        self.worst = torch.maximum(self.worst, self.run)
        self.skipped = self.skipped + bad
        return bad.float()

    def read(self) -> tuple[int, int]:
        """(the longest run of bad steps, the bad steps) since the last read. A host sync."""
        worst, skipped = int(self.worst), int(self.skipped)
        self.worst = self.run.clone()
        self.skipped = torch.zeros_like(self.skipped)
        return worst, skipped
