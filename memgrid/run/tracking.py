"""Where users already track experiments: Ray Tune's own logger callbacks for MLflow and Weights &
Biases, one run per pack (a Tune trial), off unless a flag asks (`memgrid run --mlflow URI`,
`--wandb PROJECT`). Each run is named after its pack and carries, as parameters, what the pack
is (grid, arch, l, c, its points, how its rate was chosen) and, as metrics, its reports
(points done and stopped, the losses' minimum, median and maximum, per epoch). The points
themselves stay in the results folder's Parquet tables.

Needs the optional extra: ``pip install -e ".[tracking]"`` (mlflow-skinny, wandb).
"""

from __future__ import annotations

import os

from ..config import ConfigError
from ..packs import spec_points

TRACKERS = ("mlflow", "wandb")
EXTRA = 'pip install -e ".[tracking]"'


def check(tracking: list[tuple[str, str]]) -> None:
    """ConfigError, one line naming the flag, where a tracker's package is not installed."""
    for kind, _ in tracking:         # each tracker is its package's name
        try:
            __import__(kind)
        except ImportError:
            raise ConfigError(f"command line: --{kind}: the {kind} package is not installed "
                              f"({EXTRA})") from None


def pack_params(config: dict) -> dict:
    """What a pack is, from its trial's config: the parameters of its tracking run (the whole
    config holds the pack's points as one long string)."""
    pid, points = spec_points(config["pack"])
    p = points[0]
    return {"grid": config.get("grid"), "pack_id": pid, "arch": p.arch, "layers": p.layers,
            "cells": p.cells, "points": len(points),
            "positions": ",".join(map(str, sorted({q.position for q in points}))),
            "seeds": ",".join(map(str, sorted({q.seed for q in points}))),
            "lr_source": config.get("lr_source"), "max_epochs": p.max_epochs}


def callbacks(tracking: list[tuple[str, str]], experiment: str) -> list:
    """Tune callbacks for `tracking` [(kind, where)]: MLflow at a tracking URI (a local folder
    such as `file:./mlruns`, a database or a server), W&B in a project (offline unless WANDB_MODE says otherwise);
    `experiment`: the grid's name."""
    out = []
    for kind, where in tracking:
        if kind == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            if "://" not in where or where.startswith("file:"):
                # a local folder: MLflow 3 reads and writes it, but refuses it unless told
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

            class _MLflow(MLflowLoggerCallback):
                def log_trial_start(self, trial):          # the pack, not its long config
                    if trial not in self._trial_runs:
                        run = self.mlflow_util.start_run(
                            tags={**self.tags, "trial_name": str(trial)},
                            run_name=spec_points(trial.config["pack"])[0])
                        self._trial_runs[trial] = run.info.run_id
                        self.mlflow_util.log_params(run_id=self._trial_runs[trial],
                                                    params_to_log=pack_params(trial.config))

            out.append(_MLflow(tracking_uri=where, experiment_name=experiment,
                               save_artifact=False))
        elif kind == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback

            out.append(WandbLoggerCallback(project=where, group=experiment,
                                           excludes=["pack", "cells"],    # long: the points
                                           mode=os.environ.get("WANDB_MODE", "offline")))
        else:
            raise ValueError(f"unknown tracker {kind!r} (one of {', '.join(TRACKERS)})")
    return out
