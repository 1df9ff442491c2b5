"""Where users track experiments: `memgrid run --mlflow URI` logs each pack as an MLflow run,
in a real local store, read back with MLflow's own client."""

import subprocess
import sys

import pandas as pd
import pytest

from .conftest import write_grid

mlflow = pytest.importorskip("mlflow")


@pytest.mark.slow
def test_run_logs_each_pack_to_a_local_mlflow_store(tmp_path):
    grid = write_grid(tmp_path / "tracked.yaml", name="tracked",
                      axes={"arch": ["rnn", "gru"], "layers": [1], "cells": [2],
                            "position": "1..2", "seed": "0..1"},
                      train={"max_epochs": 60, "eval_every": 20, "eval_size": 128},
                      resources={"pack": 2})
    store = (tmp_path / "mlruns").as_uri()
    r = subprocess.run([sys.executable, "-m", "memgrid", "run", str(grid), "--out",
                        str(tmp_path / "res"), "--mlflow", store], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    points = pd.read_parquet(tmp_path / "res" / "points")
    import os
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")     # a local folder, as memgrid's
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("tracked")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == points["pack_id"].nunique() == 4          # a run per pack
    assert {r.info.run_name for r in runs} == set(points["pack_id"])
    for run in runs:
        mine = points[points["pack_id"] == run.info.run_name]
        p = run.data.params
        assert (p["arch"], p["layers"], p["cells"], p["points"]) == \
            (mine["arch"].iloc[0], "1", "2", str(len(mine)))
        assert p["seeds"] == ",".join(map(str, sorted(set(mine["seed"]))))
        assert run.data.metrics["points_done"] == len(mine)
        assert run.info.status == "FINISHED"


def test_a_tracker_that_is_not_installed_is_one_line(tmp_path):
    """--wandb without the package: exit 2, one line naming the flag and the extra, nothing
    written (wandb is not among the test dependencies)."""
    try:
        import wandb  # noqa: F401 (present: the refusal cannot be seen)
        pytest.skip("wandb is installed here")
    except ImportError:
        pass
    grid = write_grid(tmp_path / "g.yaml", name="g",
                      axes={"arch": ["rnn"], "layers": [1], "cells": [2], "position": [1],
                            "seed": [0]})
    r = subprocess.run([sys.executable, "-m", "memgrid", "run", str(grid), "--out",
                        str(tmp_path / "res"), "--wandb", "proj"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("memgrid: error: command line: --wandb: the wandb package is not "
                               "installed"), r.stderr
    assert not (tmp_path / "res").exists()
