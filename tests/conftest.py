"""Shared fixtures: tiny grids made by shrinking the real ones, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tune_configs"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """What trains inside the test process trains on one torch thread, as each trial does (Ray
    gives a trial one CPU): on the tests' small tensors a second thread adds only its
    synchronisation, which on a busy machine costs many times the arithmetic."""
    import torch

    torch.set_num_threads(1)


def write_grid(path: Path, **sections) -> Path:
    """A grid file from sections (axes=..., train=..., ...)."""
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


@pytest.fixture
def tiny_grid(tmp_path):
    """An rnn/gru grid of 16 points that trains in seconds."""
    return write_grid(
        tmp_path / "tiny.yaml", name="tiny",
        axes={"arch": ["rnn", "gru"], "layers": [1], "cells": [2], "position": "1..2", "seed": "0..3"},
        task={"q_min": 4, "q_max": 6},
        train={"max_epochs": 60, "eval_size": 128, "eval_every": 20, "batch_size": 32},
    )


def memgrid_cli(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    """Run `memgrid ARGS` in a fresh process, as a user would."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "memgrid.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=kw.pop("cwd", ROOT), **kw)


def stored_parts(out: Path) -> list[Path]:
    """The points part files stored in the results folder `out`: not the hidden ones still
    being written, which a kill can leave behind unrenamed (pathlib's glob matches a name
    starting with a dot, where pyarrow and pandas skip it)."""
    folder = out / "points"
    if not folder.exists():
        return []
    return [f for f in folder.glob("*.parquet") if not f.name.startswith(".")]
