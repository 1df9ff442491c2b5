"""memgrid: how far back can a recurrent network remember? Grids of RNN/LSTM/GRU trainings on
the random memorization task (Illium et al., ICAART 2022), on Ray Tune, results in Parquet."""

__version__ = "0.1.0"

from .config import ConfigError as ConfigError
from .config import Grid as Grid
from .config import Point as Point
from .config import load_grid as load_grid
from .train import PackTrainer as PackTrainer
from .train import train_points as train_points
