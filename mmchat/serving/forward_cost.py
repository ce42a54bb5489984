"""What a forward costs, fitted as it runs: the scheduler's rule for mixing, drafting and trees."""

from __future__ import annotations


class ForwardCost:
    """A forward's seconds as `fixed + per_position * positions` (positions: rows x new columns),
    fitted by least squares over the forwards run so far, recent ones weighing most.

    On this 2-core CPU a batch-16 decode step took about 12 ms and a batch-16 prefill of 13 tokens
    about 47 ms, so padding 15 running rows to a newcomer's 13 columns cost more than a second
    forward. Where a forward's time hardly grows with its positions (a GPU, expected; none was lent
    to measure), the fitted per-position cost is near zero and every join is mixed.
    """

    def __init__(self, decay: float = 0.98):
        self.decay = decay
        self.n = self.x = self.y = self.xx = self.xy = 0.0

    def add(self, positions: int, seconds: float) -> None:
        d = self.decay
        self.n, self.x, self.y = d * self.n + 1, d * self.x + positions, d * self.y + seconds
        self.xx, self.xy = d * self.xx + positions * positions, d * self.xy + positions * seconds

    def fit(self) -> tuple[float, float] | None:
        """(fixed seconds, seconds per position), or None until forwards of different sizes were seen."""
        spread = self.n * self.xx - self.x * self.x
        if self.n < 4 or spread <= 1e-9 * max(self.n * self.xx, 1.0):
            return None
        per_position = max(0.0, (self.n * self.xy - self.x * self.y) / spread)
        fixed = max(0.0, (self.y - per_position * self.x) / self.n)
        return fixed, per_position

    def cheaper_apart(self, wasted: int) -> bool:
        """Whether `wasted` padded positions cost more than one more forward; mixing until the fit is known."""
        fit = self.fit()
        return fit is not None and fit[1] * wasted > fit[0]
