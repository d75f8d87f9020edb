"""One progress bar for a whole batch: items done (running items count by their fraction of steps),
the training it/s summed over the workers, and the ETA of the batch."""
from __future__ import annotations

from tqdm import tqdm


class BatchBar:
    def __init__(self, total: int, done: int, enabled: bool = True):
        self.finished = done
        self.bar = tqdm(total=total, initial=done, unit="item", dynamic_ncols=True, disable=not enabled,
                        bar_format="{l_bar}{bar}| {n:.1f}/{total} items [{elapsed}<{remaining}{postfix}]")

    def item_finished(self) -> None:
        self.finished += 1
        self.show({})

    def show(self, progress: dict[str, dict]) -> None:
        """progress: item id -> {"step", "total", "it_per_s"} of the items training now."""
        n = self.finished + sum(p["step"] / max(1, p["total"]) for p in progress.values())
        if n > self.bar.n:  # a resumed item may step back to its checkpoint: never move the bar back
            self.bar.update(n - self.bar.n)
        rate = sum(p["it_per_s"] for p in progress.values())
        self.bar.set_postfix_str(f"{rate:.2f} it/s, {len(progress)} training" if progress else "")

    def write(self, message: str) -> None:
        self.bar.write(message)

    def close(self) -> None:
        self.bar.close()
