"""The per-point stopping rule, apart from torch: the trainer applies it at each evaluation,
and the analysis replays it on recorded curves (what a run with other stop settings would
have ended with, without training again)."""

from __future__ import annotations

import math

from .config import Point

MIN_DELTA = 1e-3
"""an evaluation loss counts as an improvement when it beats the best by this much"""


def stop_check(p: Point, epoch: int, loss: float, train_loss: float, best: float,
               best_epoch: int) -> tuple[str | None, float, int]:
    """The stopping rule, applied at each evaluation: (stop reason or None, best, best_epoch).

    `diverged` on a non-finite loss; `solved` below `solved_loss`; `plateau` (if on) when the
    loss sits within `plateau_tol` of the constant-guess level `plateau_loss` (or above it) and
    has not improved on the best by MIN_DELTA for `patience` epochs; `max_epochs` at the end.
    """
    if not (math.isfinite(loss) and math.isfinite(train_loss)):
        return "diverged", best, best_epoch
    if loss < best - MIN_DELTA:
        best_epoch = epoch
    best = min(best, loss)
    if loss < p.solved_loss:
        return "solved", best, best_epoch
    if p.plateau and loss >= p.plateau_loss - p.plateau_tol and epoch - best_epoch >= p.patience:
        return "plateau", best, best_epoch
    if epoch >= p.max_epochs:
        return "max_epochs", best, best_epoch
    return None, best, best_epoch
