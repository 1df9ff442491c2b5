"""Analysis of a results folder: memory limits, memory capacity, the paper's claims, figures.

Pure functions over pandas DataFrames shaped like the points table (``memgrid.results.schema``) and the
curves table; :func:`write_report` turns a results folder into ``report.md`` and figures.
"""

from .capacity import capacity_violations as capacity_violations
from .capacity import memory_capacity as memory_capacity
from .claims import check_claims as check_claims
from .convergence import budget_convergence as budget_convergence
from .convergence import budget_rungs as budget_rungs
from .convergence import converged_budget as converged_budget
from .convergence import limit_marks as limit_marks
from .convergence import limits_by_budget as limits_by_budget
from .convergence import score_budgets as score_budgets
from .limits import against_state_size as against_state_size
from .limits import bimodality as bimodality
from .limits import compare_runs as compare_runs
from .limits import limit_violations as limit_violations
from .limits import memory_limits as memory_limits
from .limits import plateau_effect as plateau_effect
from .limits import replay_stopping as replay_stopping
from .plots import plot_heatmaps as plot_heatmaps
from .plots import plot_limit_per_cell as plot_limit_per_cell
from .plots import plot_limits_by_budget as plot_limits_by_budget
from .plots import plot_limits_vs_units as plot_limits_vs_units
from .plots import plot_loss_curves as plot_loss_curves
from .plots import plot_mc_vs_units as plot_mc_vs_units
from .plots import save as save
from .report import write_report as write_report
from .tables import budget_steps as budget_steps
from .tables import fixed_length as fixed_length
from .tables import load_curves as load_curves
from .tables import load_points as load_points
from .tables import mean_losses as mean_losses
from .tables import random_length as random_length
