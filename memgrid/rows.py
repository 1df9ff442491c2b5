"""The rows a finished point is stored as: its points row and its curve rows.

The trainer (memgrid.train) and the ESN fit (memgrid.esn) hand up what they measured; the rows
built here are what the results folder stores (memgrid.results.schema: POINT_SCHEMA and
CURVE_SCHEMA). A trained point's row gets its stream MC here too (:func:`stored_rows`, by
memgrid.stream_mc), measured on its trained weights once it has finished.
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
    and where, on which code path (`kernel`, see KERNELS; default: PyTorch ops on `device`),
    from which file a user's cell came (`cell_source`) and by which memgrid it ran. The one row builder of trained and ESN points."""
    if kernel is None:
        kernel = "cuda" if device.startswith("cuda") else "torch"

    from .user_cells import source_of

    source = source_of(point.arch)
    row = point_settings(point, grid_name)
    row.update(units=point.units, params=point.params, epochs=epochs, stop_reason=stop_reason,
               loss=loss, best_loss=best_loss,
               r2=r2 if r2 is not None and math.isfinite(r2) else None, mc_stream=mc_stream,
               wall_s=wall_s, pack_id=pack_id, device=device, kernel=kernel,
               cell_source=source.text if source else None, memgrid_version=__version__,
               lr_source=lr_source, finished_at=datetime.now(timezone.utc))
    return row


def curve_rows(point_id: str, curve) -> list[dict[str, Any]]:
    """Curve rows (CURVE_SCHEMA) of one point from its (epoch, train_loss, eval_loss)."""
    return [dict(point_id=point_id, epoch=e, train_loss=t, eval_loss=v) for e, t, v in curve]


def stored_rows(cfg: Point, finished: list[tuple[dict, list[dict], dict]],
                device) -> tuple[list[dict], list[dict]]:
    """The points rows and curve rows of a pack's finished points, as the results folder stores
    them. `finished`: per point, its row (:func:`point_row`, without `mc_stream`), its curve
    rows and its trained weights (one member's, `{name: tensor}`); `cfg`: a Point of the pack,
    whose settings name the MC's stream (mc_length, mc_low, mc_high; 0: none).

    Each row's `mc_stream` is memgrid.stream_mc.trained_memory_capacity of its weights, one
    network at a time, so that a point's MC is a function of the point alone: which points
    finish together depends on the clock, and a batch's float64 products round differently
    from one network's (by about 1e-15 at N >= 80). Diverged networks keep None."""
    rows = [dict(r) for r, _, _ in finished]
    curves = [c for _, cs, _ in finished for c in cs]
    if cfg.mc_length == 0:
        return rows, curves
    import torch

    from .stream_mc import trained_memory_capacity

    for r, (_, _, w) in zip(rows, finished):
        if r["stop_reason"] == "diverged":
            continue
        with torch.no_grad():
            mc, _ = trained_memory_capacity(cfg.arch, {k: v.unsqueeze(0) for k, v in w.items()},
                                            torch.tensor([r["seed"]], device=device),
                                            length=cfg.mc_length, low=cfg.mc_low, high=cfg.mc_high)
        v = mc.item()
        r["mc_stream"] = v if math.isfinite(v) else None
    return rows, curves
