"""The rows a finished point is stored as: its points row and its curve rows.

The trainer (memgrid.train) and the ESN fit (memgrid.esn) hand up what they measured; the rows
built here are what the results folder stores (memgrid.results.schema: POINT_SCHEMA and
CURVE_SCHEMA).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from . import __version__
from .config import ESN_KEYS, Point


def point_settings(point: Point, grid_name: str) -> dict[str, Any]:
    """The settings half of a points row."""
    row = point.to_dict()
    row.update(point_id=point.point_id, grid=grid_name, q_lo=point.q_lo, q_hi=point.q_hi)
    if point.arch != "esn":
        for k in ESN_KEYS:
            row[k] = None
    return row


def point_row(point: Point, grid_name: str, *, epochs: int, stop_reason: str, loss: float,
              best_loss: float, r2: float | None, wall_s: float, pack_id: str, device: str,
              mc_stream: float | None = None, lr_source: str | None = None,
              kernel: str | None = None) -> dict[str, Any]:
    """A points row (POINT_SCHEMA) of a finished point: its settings, what its run measured,
    and where, on which code path (`kernel`, see KERNELS; default: PyTorch ops on `device`)
    and by which memgrid it ran. The one row builder of trained and ESN points."""
    if kernel is None:
        kernel = "cuda" if device.startswith("cuda") else "torch"

    row = point_settings(point, grid_name)
    row.update(units=point.units, params=point.params, epochs=epochs, stop_reason=stop_reason,
               loss=loss, best_loss=best_loss,
               r2=r2 if r2 is not None and math.isfinite(r2) else None, mc_stream=mc_stream,
               wall_s=wall_s, pack_id=pack_id, device=device, kernel=kernel,
               memgrid_version=__version__,
               lr_source=lr_source, finished_at=datetime.now(timezone.utc))
    return row


def curve_rows(point_id: str, curve) -> list[dict[str, Any]]:
    """Curve rows (CURVE_SCHEMA) of one point from its (epoch, train_loss, eval_loss)."""
    return [dict(point_id=point_id, epoch=e, train_loss=t, eval_loss=v) for e, t, v in curve]
