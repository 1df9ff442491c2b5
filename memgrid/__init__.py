"""memgrid: how far back can a recurrent network remember? Grids of recurrent-network trainings on
the random memorization task (Illium et al., ICAART 2022), on Ray Tune, results in Parquet."""

import time as _time

__version__ = "0.1.0"
IMPORTED = _time.monotonic()
"""when memgrid was first imported (time.monotonic()): the earliest start the progress clock
believes (memgrid.processes.launch_time)"""

from .cells import Cell as Cell
from .config import ConfigError as ConfigError
from .config import Grid as Grid
from .config import Point as Point
from .grid_file import load_grid as load_grid


def __getattr__(name: str):
    # torch-backed names load on first use: the CLI's input checks and the analysis of a
    # results folder do not pay torch's import
    if name in ("PackTrainer", "train_points"):
        from . import train
        return getattr(train, name)
    raise AttributeError(f"module 'memgrid' has no attribute {name!r}")


__all__ = ["Cell", "ConfigError", "Grid", "Point", "load_grid", "PackTrainer", "train_points", "__version__"]
