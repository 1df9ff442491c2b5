"""memgrid: how far back can a recurrent network remember? Grids of recurrent-network trainings on
the random memorization task (Illium et al., ICAART 2022), on Ray Tune, results in Parquet."""

import time as _time

__version__ = "0.1.0"
IMPORTED = _time.monotonic()
"""when memgrid was first imported (time.monotonic()): the earliest start the progress clock
believes (memgrid.processes.launch_time)"""

_PUBLIC = {"Cell": "cells", "ConfigError": "config", "Grid": "config", "Point": "config",
           "load_grid": "grid_file", "PackTrainer": "train", "train_points": "train"}
"""the public names and their modules"""


def __getattr__(name: str):
    # every public name loads on first use: `memgrid` itself imports nothing, so that the
    # command line's own signal handlers are in place before anything takes time, and the
    # analysis of a results folder does not pay torch's import
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'memgrid' has no attribute {name!r}")


__all__ = ["Cell", "ConfigError", "Grid", "Point", "load_grid", "PackTrainer", "train_points", "__version__"]
