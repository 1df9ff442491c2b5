"""Analysis on hand-made tables with known answers: limits, MC, bimodality, plateau effect,
the paper's claims, figures and the report of a tiny Parquet results folder."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from memgrid.analysis import (against_state_size, bimodality, capacity_violations, check_claims,
                              compare_runs, limit_violations, memory_capacity, memory_limits,
                              plateau_effect,
                              plot_heatmaps, plot_limit_per_cell, plot_limits_vs_units,
                              plot_loss_curves, save,
                              write_report)
from memgrid.analysis.scripts import heatmap
from memgrid.analysis.tables import (arch_label, load_curves, load_points, mean_losses,
                                     units_text, variant_columns)
from memgrid.config import Point
from memgrid.results import write_grid_identity, write_points
from memgrid.rows import point_settings

ROOT = Path(__file__).resolve().parents[1]


def points(losses: dict[int, float | list[float]], arch="rnn", layers=1, cells=5,
           r2: dict[int, float] | None = None, epochs: int = 100, max_epochs: int = 5000,
           **settings) -> pd.DataFrame:
    """A points table of one configuration: `losses` maps p to one loss per seed (a list) or
    to one loss for seeds 0..2."""
    rows = []
    for p, ls in losses.items():
        ls = ls if isinstance(ls, list) else [ls] * 3
        for seed, loss in enumerate(ls):
            rows.append(dict(arch=arch, layers=layers, cells=cells, position=p, seed=seed,
                             q_min=10, q_max=15, loss=loss,
                             r2=(r2 or {}).get(p, 0.0), epochs=epochs, max_epochs=max_epochs,
                             point_id=f"{arch}-{layers}-{cells}-{p}-{seed}-{settings}",
                             **settings))
    return pd.DataFrame(rows)


def verdicts(table: pd.DataFrame) -> dict[str, str]:
    return dict(zip(check_claims(table)["figure"], check_claims(table)["verdict"]))


# ---------------------------------------------------------------------------------------------
# Memory-distance limits


def test_limit_known():
    lim = memory_limits(points({p: 0.01 if p <= 4 else 0.2 for p in range(1, 9)}))
    r = lim.iloc[0]
    assert len(lim) == 1
    assert (r["limit"], r["units"], r["bound"], r["p_max"]) == (4, 5, 5, 8)
    assert r["stop"] == "loss" and not r["limit_censored"] and r["complete"]
    assert r["loss_at_limit"] == pytest.approx(0.01) and r["loss_next"] == pytest.approx(0.2)


def test_limit_hole_and_end():
    hole = memory_limits(points({1: 0.01, 2: 0.01, 4: 0.01, 5: 0.01})).iloc[0]
    assert (hole["limit"], hole["stop"], hole["limit_censored"], hole["complete"]) == \
        (2, "missing", True, False)
    assert math.isnan(hole["loss_next"])
    end = memory_limits(points({p: 0.01 for p in range(1, 7)})).iloc[0]
    assert (end["limit"], end["stop"], end["limit_censored"], end["complete"]) == (6, "end", True, True)
    assert memory_limits(points({1: 0.3, 2: 0.01})).iloc[0]["limit"] == 0
    no_p1 = memory_limits(points({2: 0.01})).iloc[0]
    assert (no_p1["limit"], no_p1["stop"]) == (0, "missing")


def test_limit_means_over_seeds_missing_seeds_and_divergence():
    # p=2: mean of 0.01, 0.01, 0.1 = 0.04 < 0.05; p=3: one seed only; p=4: mean 0.07
    t = points({1: 0.01, 2: [0.01, 0.01, 0.1], 3: [0.02], 4: [0.01, 0.1, 0.1]})
    r = memory_limits(t).iloc[0]
    assert (r["limit"], r["min_seeds"]) == (3, 1)
    assert r["loss_next"] == pytest.approx(0.07)
    # a diverged seed (NaN loss) fails its position, whatever the other seeds did
    t = points({1: 0.01, 2: [0.01, float("nan"), 0.01], 3: 0.01})
    assert memory_limits(t).iloc[0]["limit"] == 1


def test_limit_per_configuration_and_variant():
    t = pd.concat([points({1: 0.01, 2: 0.01, 3: 0.3}, lr=0.01),
                   points({1: 0.01, 2: 0.3}, lr=0.1),
                   points({1: 0.01, 2: 0.01}, cells=2, layers=2, lr=0.1)])
    lim = memory_limits(t).set_index(["cells", "lr"])
    assert lim.loc[(5, 0.01), "limit"] == 2 and lim.loc[(5, 0.1), "limit"] == 1
    assert lim.loc[(2, 0.1), ["limit", "units", "bound"]].tolist() == [2, 4, 3]


def test_limit_violations():
    t = pd.concat([points({p: 0.01 for p in range(1, 6)} | {6: 0.3}, layers=2, cells=2),
                   points({1: 0.01, 2: 0.3}, cells=3)])
    v = limit_violations(t)
    assert len(v) == 1
    assert (v.iloc[0]["cells"], v.iloc[0]["limit"], v.iloc[0]["bound"], v.iloc[0]["margin"]) == \
        (2, 5, 3, 2)


def test_against_state_size_known():
    """N from the cells (lru: 2 per unit) or, for an arch memgrid does not define (a withdrawn
    cell's rows), from the rows' own `units`; yes / no / ? against the limit, the stream MC's
    mean, largest and share of N, and the cost columns, on a table with known answers."""
    t = pd.concat([
        points({p: 0.01 for p in range(1, 6)} | {6: 0.2}, arch="lru", cells=2),   # 5 >= N = 4
        points({1: 0.01, 2: 0.01, 3: 0.3}, cells=4, epochs=300),                  # 2 < 4, measured
        points({p: 0.01 for p in range(1, 4)}, arch="gone", cells=1).assign(units=4),  # 3 < 4, censored
    ]).assign(mc_stream=lambda d: d["position"] * 0.5, wall_s=lambda d: d["seed"] * 2.0)
    got = against_state_size(t).set_index("arch")
    assert got["units"].to_dict() == {"lru": 4, "rnn": 4, "gone": 4}
    assert got["limit"].to_dict() == {"lru": 5, "rnn": 2, "gone": 3}
    assert got["reaches_n"].to_dict() == {"lru": "yes", "rnn": "no", "gone": "?"}
    assert got.loc["lru", "stream_mc"] == pytest.approx(np.mean(range(1, 7)) * 0.5)
    assert got.loc["lru", "stream_mc_max"] == 3.0
    assert got.loc["rnn", "stream_share"] == pytest.approx(1.0 / 4)
    assert got.loc["rnn", "epochs"] == 300 and got.loc["gone", "seconds"] == 2.0   # seeds 0..2: 0, 2, 4
    assert against_state_size(t.drop(columns="mc_stream"))["stream_mc"].isna().all()
    with pytest.raises(ValueError, match="arch 'gone': not a cell"):
        against_state_size(t.drop(columns="units"))
    assert units_text(["rnn", "lru", "gone", "esn"]) == "N = c * l (2 c * l: LRU)"
    assert units_text(["rnn", "gru"]) == "N = c * l"


# ---------------------------------------------------------------------------------------------
# Memory capacity


def test_memory_capacity_and_violation_margin():
    # l=2, c=2: N = 4, bound 3. Seed 0: 1 + 0.9 + 0.8 + 0.7 + (NaN -> 0) + (-0.05 -> 0) + (1.2 -> 1)
    r2 = {1: 1.0, 2: 0.9, 3: 0.8, 4: 0.7, 5: float("nan"), 6: -0.05, 7: 1.2}
    t = points({p: [0.01] for p in r2}, layers=2, cells=2, r2=r2, eval_size=1025)
    small = points({p: [0.01, 0.01] for p in (1, 2)}, layers=2, cells=2, r2={1: 0.5, 2: 0.5},
                   eval_size=1025)
    small["seed"] = [1, 2, 1, 2]  # seeds 1 and 2 ran p = 1, 2 only
    mc = memory_capacity(pd.concat([t, small])).set_index("seed")
    assert mc.loc[0, "mc"] == pytest.approx(4.4)
    assert mc.loc[0, ["positions", "r2_missing", "p_max", "units", "bound"]].tolist() == [7, 1, 7, 4, 3]
    assert mc.loc[0, "margin"] == pytest.approx(1.4)
    assert mc.loc[0, "noise"] == pytest.approx(7 / 1024)
    assert mc.loc[1, "mc"] == pytest.approx(1.0) and mc.loc[1, "positions"] == 2
    v = capacity_violations(pd.concat([t, small]))
    assert v["seed"].tolist() == [0] and v.iloc[0]["margin"] == pytest.approx(1.4)
    assert capacity_violations(pd.concat([t, small]), tol=1.5).empty


# ---------------------------------------------------------------------------------------------
# Bimodality and the plateau stop


def test_bimodality_shares():
    t = points({1: [0.01, 0.01], 2: [0.0, 0.2], 3: [0.25, 0.25]})
    b = bimodality(t)
    assert (b["points"], b["points_between"], b["means"], b["means_between"]) == (6, 1, 3, 1)
    assert b["share_points"] == pytest.approx(1 / 6) and b["share_means"] == pytest.approx(1 / 3)
    b = bimodality(t, lo=0.0, hi=0.01)
    assert (b["points_between"], b["means_between"]) == (3, 1)


def test_plateau_effect():
    on = points({1: [0.01], 2: [0.25], 3: [0.01], 4: [0.25]}, plateau=True, patience=100,
                grid="on")
    on["stop_reason"] = ["solved", "plateau", "solved", "plateau"]
    off = points({1: [0.01], 2: [0.01], 3: [0.2]}, plateau=False, patience=1000, grid="off")
    off["stop_reason"] = ["solved", "solved", "max_epochs"]
    changed, s = plateau_effect(on, off)
    assert changed["position"].tolist() == [2, 3]
    assert changed["loss_diff"].tolist() == pytest.approx([-0.24, 0.19])
    assert changed["solved_without"].tolist() == [True, False]
    assert s == {"matched": 3, "only_with": 1, "only_without": 0, "solved_with": 2,
                 "solved_without": 2, "gained": 1, "lost": 1, "stopped_plateau": 1,
                 "stopped_plateau_then_solved": 1,
                 "mean_loss_diff": pytest.approx(-0.05 / 3), "max_abs_loss_diff": pytest.approx(0.24)}
    assert len(plateau_effect(on, off, atol=0.0)[0]) == 2  # p=1 has equal losses
    with pytest.raises(ValueError, match="repeated"):
        plateau_effect(pd.concat([on, on]), off)


# ---------------------------------------------------------------------------------------------
# The paper's claims

FIG4 = {p: 0.01 if p <= 5 else 0.15 if p <= 8 else 0.25 for p in range(1, 11)}


def test_claims_fig4():
    assert verdicts(points(FIG4))["Fig. 4"] == "holds"
    assert verdicts(points(FIG4 | {6: 0.01}))["Fig. 4"] == "does not hold"
    assert verdicts(points({p: FIG4[p] for p in range(1, 10)}))["Fig. 4"] == "not covered by this grid"
    claims = check_claims(points(FIG4 | {9: 0.1}))
    assert "p=9: 0.100 not >= 0.2" in claims.set_index("figure").loc["Fig. 4", "evidence"]


def test_claims_lstm_slower_from_epochs_and_curves():
    six = range(1, 7)       # six (l, c, p), all one way: a sign test's p = 2 / 2**6 < 0.05
    rnn = points({p: 0.01 for p in six}, cells=2, epochs=100)
    lstm = points({p: 0.01 if p == 1 else 0.3 for p in six}, arch="lstm", cells=2, epochs=400)
    assert verdicts(pd.concat([rnn, lstm]))["Fig. 5"] == "holds"
    fast = points({p: 0.01 for p in six}, arch="lstm", cells=2, epochs=50)
    assert verdicts(pd.concat([rnn, fast]))["Fig. 5"] == "does not hold"
    assert verdicts(rnn)["Fig. 5"] == "not covered by this grid"
    # slower at three positions, faster at three: a coin flip, not a finding
    mixed = pd.concat([points({p: 0.01}, arch="lstm", cells=2, epochs=400 if p <= 3 else 50)
                       for p in six])
    claim = check_claims(pd.concat([rnn, mixed])).set_index("figure").loc["Fig. 5"]
    assert claim["verdict"] == "undecided"
    assert "slower in 3, faster in 3, tied in 0 of 6" in claim["evidence"]
    assert "sign test p = 1.00" in claim["evidence"]
    # curves, when given, decide: the lstm crossed 0.05 at epoch 10, the rnn at epoch 90
    both = pd.concat([rnn, lstm])
    curves = pd.DataFrame([dict(point_id=pid, epoch=e, eval_loss=0.3 if e < cross else 0.01)
                           for pid, a in zip(both["point_id"], both["arch"])
                           for cross in [10 if a == "lstm" else 90] for e in (0, 10, 90)])
    claims = check_claims(both, curves).set_index("figure")
    assert claims.loc["Fig. 5", "verdict"] == "does not hold"


def test_claims_gated_p10_and_c_equals_p():
    gated = lambda loss: points({9: 0.2, 10: loss}, arch="lstm")  # noqa: E731
    assert verdicts(gated(0.1))["Fig. 8"] == "holds"
    assert verdicts(gated(0.02))["Fig. 8"] == "does not hold"
    assert verdicts(points({9: 0.02}, arch="gru"))["Fig. 8"] == "not covered by this grid"
    diag = pd.concat([points({c: 0.01, c + 1: 0.3}, cells=c) for c in (1, 2, 3)])
    assert verdicts(diag)["Fig. 6"] == "holds"
    bad = pd.concat([diag[diag["cells"] < 3], points({3: 0.2}, cells=3)])
    assert verdicts(bad)["Fig. 6"] == "does not hold"
    assert verdicts(points({1: 0.01}, cells=3))["Fig. 6"] == "not covered by this grid"
    # one seed of three fails at p = c: the mean (0.037) is below 0.05, the claim is not
    one_fails = pd.concat([diag[diag["cells"] < 3], points({3: [0.01, 0.09, 0.01]}, cells=3)])
    claims = check_claims(one_fails).set_index("figure")
    assert claims.loc["Fig. 6", "verdict"] == "does not hold"
    assert "c=3: 2 of 3 seeds" in claims.loc["Fig. 6", "evidence"]
    # another lr where every seed makes it: the cell count holds (best setting)
    rescued = pd.concat([one_fails.assign(lr=0.003), points({3: 0.01}, cells=3, lr=0.03)])
    assert verdicts(rescued)["Fig. 6"] == "holds"


def test_claims_lstm_p5():
    lstm = lambda ls: points({p: ls[p - 1] for p in range(1, 6)}, arch="lstm")  # noqa: E731
    assert verdicts(lstm([0.01] * 5))["Fig. 5, p <= 5"] == "holds"
    claims = check_claims(lstm([0.01, 0.01, 0.146, 0.2, 0.22])).set_index("figure")
    assert claims.loc["Fig. 5, p <= 5", "verdict"] == "does not hold"
    assert "p=3: 0.146" in claims.loc["Fig. 5, p <= 5", "evidence"]
    assert verdicts(points({1: 0.01}, arch="lstm"))["Fig. 5, p <= 5"] == "not covered by this grid"


def test_claims_take_the_budget_into_account():
    """1000 epochs is no evidence against a claim of what 5000 epochs learn, nor for one of
    what they do not; comparisons are decided at any budget."""
    short = dict(max_epochs=1000)
    diag_fails = points({3: 0.2}, cells=3, **short)
    claims = check_claims(diag_fails).set_index("figure")
    assert claims.loc["Fig. 6", "verdict"] == "not covered by this grid"
    assert "would be 'does not hold'" in claims.loc["Fig. 6", "evidence"]
    assert "1,000 SGD steps" in claims.loc["Fig. 6", "evidence"]
    assert verdicts(points({3: 0.01}, cells=3, **short))["Fig. 6"] == "holds"
    assert verdicts(points({10: 0.2}, arch="gru", **short))["Fig. 8"] == "not covered by this grid"
    assert verdicts(points({10: 0.02}, arch="gru", **short))["Fig. 8"] == "does not hold"
    assert verdicts(points(FIG4, **short))["Fig. 4"] == "not covered by this grid"
    # 8 steps per epoch x 1000 epochs = 8000 steps: more than the paper's 5000
    assert verdicts(points({3: 0.2}, cells=3, steps_per_epoch=8, **short))["Fig. 6"] == \
        "does not hold"


def test_claims_capacity_bound():
    ok = points({p: 0.01 for p in range(1, 5)}, cells=2, r2={1: 1.0, 2: 0.9, 3: 0.05})
    assert verdicts(ok)["Sec. 4"] == "holds"
    over = points({p: 0.01 for p in range(1, 5)}, cells=2, r2={1: 1.0, 2: 0.9, 3: 0.6})
    assert verdicts(over)["Sec. 4"] == "does not hold"
    # two positions for a bound of 2: the sum of r2 cannot exceed it, so nothing is tested
    assert verdicts(points({1: 0.01, 2: 0.01}, cells=2, r2={1: 1.0, 2: 1.0}))["Sec. 4"] == \
        "not covered by this grid"


def test_claims_fixed_vs_random():
    rand = points({1: 0.01, 2: 0.01, 3: 0.3}, cells=2)
    fixed = points({1: 0.01, 2: 0.01, 3: 0.01}, cells=2).assign(q_max=10)
    assert verdicts(pd.concat([rand, fixed]))["Fig. 9"] == "holds"
    worse = fixed.assign(loss=np.where(fixed["position"] == 2, 0.2, fixed["loss"]))
    assert verdicts(pd.concat([rand, worse]))["Fig. 9"] == "does not hold"
    assert verdicts(rand)["Fig. 9"] == "not covered by this grid"
    assert verdicts(fixed)["Fig. 4"] == "not covered by this grid"  # random-length claims


def test_claims_counting_cases():
    def fixed(l, c, losses):
        return points(losses, layers=l, cells=c).assign(q_max=10)
    learned = pd.concat([fixed(1, 2, {10: 0.01}), fixed(2, 2, {8: 0.01, 9: 0.02, 10: 0.03})])
    assert verdicts(learned)["Fig. 9, counting"] == "holds"
    one_seed = pd.concat([fixed(1, 2, {10: [0.01, 0.2, 0.2]}), fixed(2, 2, {8: 0.01, 9: 0.02, 10: 0.03})])
    claims = check_claims(one_seed).set_index("figure")
    assert claims.loc["Fig. 9, counting", "verdict"] == "does not hold"
    assert "l=1 c=2 p=10: 0.137 (1 of 3 seeds < 0.05)" in claims.loc["Fig. 9, counting", "evidence"]
    assert verdicts(fixed(1, 2, {10: 0.01}))["Fig. 9, counting"] == "not covered by this grid"


def test_claims_bimodality_and_empty():
    crisp = pd.concat([points({1: 0.01, 2: 0.25}, cells=c) for c in (1, 2)])
    assert verdicts(crisp)["Figs. 6, 7"] == "holds"
    mushy = pd.concat([points({1: 0.01, 2: 0.1}, cells=c) for c in (1, 2)])
    assert verdicts(mushy)["Figs. 6, 7"] == "does not hold"
    assert verdicts(points({1: 0.01, 2: 0.1}))["Figs. 6, 7"] == "not covered by this grid"
    empty = check_claims(points({1: 0.01}).iloc[:0])
    assert len(empty) == 9 and set(empty["verdict"]) == {"not covered by this grid"}


# ---------------------------------------------------------------------------------------------
# Figures


def _curves(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([dict(point_id=pid, epoch=e, train_loss=loss, eval_loss=loss + 0.1 / (1 + e))
                         for pid, loss in zip(table["point_id"], table["loss"]) for e in (0, 10, 20)])


def test_plots_axes_and_save(tmp_path):
    t = pd.concat([points(FIG4), points(FIG4, layers=2, cells=3),
                   points(FIG4, arch="lstm"), points(FIG4, arch="lstm", cells=3)])
    heat = plot_heatmaps(t, "mean")
    assert len(heat.axes) == 2 * 2 + 1  # (rnn, lstm) x (l = 1, 2) panels and the colour bar
    assert len(plot_heatmaps(t, "std").axes) == 5
    assert len(plot_limits_vs_units(t).axes) == 2
    one = points(FIG4)
    curves = plot_loss_curves(one, _curves(one), "rnn", 1, 5)
    assert len(curves.axes) == 1
    assert len(curves.axes[0].lines) == len(one) + 2  # one line per point, plateau, threshold
    png = save(heat, tmp_path / "figs", "heat")
    assert png.exists() and png.with_suffix(".pdf").exists()
    with pytest.raises(ValueError):
        plot_heatmaps(t, "median")


def test_loss_curves_of_many_positions_take_a_colour_bar_and_their_late_top():
    """Past 10 positions, the colour of p is read from a colour bar, not from a legend entry
    per p; the y axis tops where the curves lie after their first 5 % of epochs, so a start
    high above them (a thinned curve's first evaluations) does not squeeze them."""
    many = points({p: 0.01 if p < 3 else 0.22 for p in range(1, 13)})
    cur = pd.DataFrame([dict(point_id=pid, epoch=e, train_loss=0.3,
                             eval_loss=0.9 if e == 0 else loss)
                        for pid, loss in zip(many["point_id"], many["loss"])
                        for e in (0, 25, 200, 400, 1000)])
    fig = plot_loss_curves(many, cur, "rnn", 1, 5)
    ax, bar = fig.axes
    assert bar.get_ylabel() == "position p" and bar.get_ylim() == (1, 12)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "constant guess 0.25", "memorized < 0.05"]
    assert ax.get_ylim() == (0, 0.3)            # 0.22 * 1.05 < 0.3, the least top
    few = plot_loss_curves(points(FIG4), _curves(points(FIG4)), "rnn", 1, 5)
    assert len(few.axes) == 1 and len(few.axes[0].get_legend().get_texts()) == len(FIG4) + 2

def test_the_state_size_label_fits_under_its_panel():
    """The x label of N against size names each cell's N per c and l; in lines of at most 60
    characters, none breaking a term such as `7 c * l`."""
    from memgrid.analysis.plots import _units_label

    text = _units_label(["rnn", "lru", "s6_bare", "mamba"])
    lines = text.split("\n")
    assert len(lines) == 2 and all(len(line) <= 60 for line in lines)
    assert text.replace("\u00a0", " ").replace("\n", " ") == (
        "state size N = c * l (2 c * l: LRU; 4 c * l: S6 (bare); 7 c * l: Mamba (S6 block))")
    assert all(line.split()[0] != "*" and not line.endswith(" c") for line in lines)

def test_limit_per_cell_draws_each_cells_limits_against_its_n():
    """A line per cell through (N, limit) in each depth's panel, N its own (2c for the LRU); the
    cells of one N per unit side by side, a tenth of an octave apart; a censored limit drawn
    open; the bound N - (l - 1) and the grid's largest p as lines."""
    t = pd.concat([points({1: 0.01, 2: 0.01, 3: 0.3}, arch="rnn", cells=2, units=2),
                   points({1: 0.01, 2: 0.3, 3: 0.3}, arch="rnn", cells=4, units=4),
                   points({1: 0.3, 2: 0.3, 3: 0.3}, arch="gru", cells=2, units=2),
                   points({1: 0.01, 2: 0.01, 3: 0.01}, arch="lru", cells=2, units=4),
                   points({1: 0.01, 2: [0.01, 0.01, 0.3], 3: 0.3}, arch="lru", layers=2,
                          cells=2, units=8)])
    fig = plot_limit_per_cell(t, converged={("rnn", 1, 2): "converged", ("rnn", 1, 4): "moves"})
    l1, l2 = fig.axes
    drawn = {line.get_gid(): (np.round(np.asarray(line.get_xdata(), float), 3).tolist(),
                              np.asarray(line.get_ydata(), float).tolist())
             for line in l1.lines if line.get_gid()}
    dodge = 2 ** 0.05
    assert drawn == {"rnn": ([round(2 / dodge, 3), round(4 / dodge, 3)], [2.0, 1.0]),
                     "gru": ([round(2 * dodge, 3)], [0.0]),           # N = c, as the RNN's
                     "lru": ([4.0], [3.0])}                           # N = 2c, alone: >= 3
    assert list(l1.lines[1].get_ydata()) == [3, 3]              # the largest p
    (lru,) = [line for line in l2.lines if line.get_gid()]
    x, y = lru.get_xdata(), lru.get_ydata()
    assert (x[0], y[0]) == (8.0, 1.0)     # l = 2: seeds 2, 2, 1: mean fails at 2
    assert l2.get_title() == "l = 2; line: N - 1"
    with pytest.raises(ValueError):
        plot_limit_per_cell(t.iloc[:0])


def test_users_cells_get_colours_of_their_own():
    """Two users' cells beside S6 (black) and the RNN: four colours, in the lines and the
    legend, whatever order the cells come in."""
    from matplotlib.colors import to_hex

    from memgrid.analysis.plots import plot_limits_vs_units
    from memgrid.analysis.tables import arch_label

    def drawn(archs):
        t = pd.concat([points({1: 0.01, 2: 0.3}, arch=a, cells=2, units=2) for a in archs])
        fig = plot_limit_per_cell(t)
        lines = {ln.get_gid(): to_hex(ln.get_color()) for ln in fig.axes[0].lines if ln.get_gid()}
        legend = {t.get_text(): to_hex(h.get_color()) for t, h in
                  zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles)}
        return lines, legend, plot_limits_vs_units(t)

    lines, legend, vs_units = drawn(["rnn", "s6_bare", "mine_b", "mine_a"])
    assert len(set(lines.values())) == 4 and to_hex("black") == lines["s6_bare"]
    assert {legend[k] for k in ("mine_a", "mine_b")} == {lines["mine_a"], lines["mine_b"]}
    legends = [lg for ax in vs_units.axes for lg in [ax.get_legend()] if lg] + vs_units.legends
    by_name = {t.get_text(): to_hex(h.get_color()) for lg in legends
               for t, h in zip(lg.get_texts(), lg.legend_handles)}
    assert [by_name[arch_label(a)] for a in ("rnn", "s6_bare", "mine_a", "mine_b")] == \
        [lines[a] for a in ("rnn", "s6_bare", "mine_a", "mine_b")]
    assert drawn(["mine_a", "mine_b", "rnn"])[0]["mine_a"] == lines["mine_a"]


def test_limit_per_cell_puts_many_cells_in_a_row_per_family():
    """Past FAMILY_ROWS cells, a row of panels per family of cells (memgrid.cells'
    Cell.family), in the order of each family's first cell; each panel draws its family's cells
    alone, and the row's first panel names them."""
    from memgrid.analysis.plots import FAMILY_ROWS

    archs = ["rnn", "gru", "mingru", "minlstm", "lru", "lru_real", "s6_bare", "mamba"]
    assert len(archs) > FAMILY_ROWS
    t = pd.concat([points({1: 0.01, 2: 0.3}, arch=a, layers=l, cells=2)
                   for a in archs for l in (1, 2)])
    fig = plot_limit_per_cell(t)
    assert len(fig.axes) == 4 * 2
    families = [["rnn", "gru"], ["mingru", "minlstm"], ["lru", "lru_real"], ["mamba", "s6_bare"]]
    for i, family in enumerate(families):
        for ax in fig.axes[2 * i:2 * i + 2]:
            assert [line.get_gid() for line in ax.lines if line.get_gid()] == family
        legend = fig.axes[2 * i].get_legend()
        assert [tx.get_text() for tx in legend.get_texts()] == [arch_label(a) for a in family]
    assert fig.axes[4].get_title() == "the LRU, l = 1"
    few = plot_limit_per_cell(t[t["arch"].isin(archs[:FAMILY_ROWS])])
    assert len(few.axes) == 2                             # one row: every cell in each panel

def test_limit_per_cell_bars_the_seeds_range_where_the_mean_passes_every_seed():
    """Seeds failing at different positions: their own limits 1, 2, 3, the mean's 4. The bar
    spans the seeds' 1..3 and the marker sits at 4, above it."""
    t = points({1: 0.01, 2: [0.06, 0.01, 0.01], 3: [0.01, 0.06, 0.01], 4: [0.01, 0.01, 0.06],
                5: 0.3}, arch="rnn", cells=8, units=8)
    (ax,) = plot_limit_per_cell(t).axes[:1]
    (line,) = [line for line in ax.lines if line.get_gid()]
    assert list(line.get_ydata()) == [4.0]
    bars = [seg for c in ax.collections for seg in getattr(c, "get_segments", list)()
            if len(seg) == 2 and seg[0][0] == seg[1][0]]                   # vertical segments
    assert [sorted((float(seg[0][1]), float(seg[1][1]))) for seg in bars] == [[1.0, 3.0]]


def test_reach_sentences_compare_each_limit_with_its_bound():
    """Two layers of 2 RNN units (N = 4, bound 3) at limit 3 reach the bound; one below it
    censored by the grid's end may still reach it."""
    from memgrid.analysis.summary import reach_sentences

    lim = pd.DataFrame({"arch": ["rnn"] * 4, "layers": [1, 1, 2, 2], "cells": [2, 4, 2, 4],
                        "units": [2, 4, 4, 8], "bound": [2, 4, 3, 7], "limit": [2, 3, 3, 5],
                        "limit_censored": [False, False, False, True]})
    assert reach_sentences(lim) == [
        "- **RNN**: the limit reaches the bound N - (l - 1) in 2 of 4 configurations (l=1: c = 2; "
        "l=2: c = 2); stays below it in 1 (l=1: c = 4); 1 below it are censored by the grid's "
        "largest p, so they may reach it (l=2: c = 4)."]



def test_a_limit_below_a_position_not_measured_yet_is_not_said_to_end_the_grid():
    """A grid still running has trained p = 3..5 of a configuration but not p = 1: its limit 0
    is censored by the hole, not by the grid's largest p, and the summary says which."""
    from memgrid.analysis.limits import limits_with_seeds
    from memgrid.analysis.summary import count_sentence, reach_sentences

    t = pd.concat([points({1: 0.01, 2: 0.01, 3: 0.3}, cells=2),     # limit 2, p = 3 failed
                   points({3: 0.3, 4: 0.3, 5: 0.3}, cells=4)])        # p = 1 not yet run
    lim = limits_with_seeds(t).assign(converged="")
    assert list(lim["stop"]) == ["loss", "missing"]
    (line,) = reach_sentences(lim)
    assert "grid's largest p" not in line
    assert line.endswith("; 1 below it lack the next position, not measured yet, so they may "
                         "reach it (l=1: c = 4).")
    assert "censored by the grid's largest p in 0 (a lower bound, `>= p`), and by a position not " \
           "measured yet in 1." in count_sentence(lim, 0.05)

def test_heatmap_lays_out_the_grid_and_dashes_a_limit_not_run_past():
    t = pd.concat([points({1: 0.01, 2: 0.2, 3: 0.25}, cells=1),   # limit 1, p = 2 failed
                   points({1: 0.01, 2: 0.01}, cells=2),            # limit >= 2: p = 3 not run
                   points({2: 0.01, 3: 0.01}, cells=3)])           # p = 1 not run: no limit
    axes = {"arch": ["rnn"], "layers": [1, 2], "cells": [1, 2, 3, 4], "position": [1, 2, 3],
            "seed": [0, 1, 2]}
    fig = plot_heatmaps(t, "mean", axes=axes)
    assert len(fig.axes) == 2 + 1   # l = 1, 2 and the colour bar
    l1, l2 = fig.axes[:2]
    shown = l1.images[0].get_array()
    assert shown.shape == (4, 3)
    assert shown.mask.tolist() == [[False] * 3, [False, False, True], [True, False, False],
                                   [True] * 3]
    assert l2.images[0].get_array().mask.all() and [x.get_text() for x in l2.texts] == ["not run"]
    drawn = [(tuple(line.get_xdata()), tuple(line.get_ydata()), line.get_linestyle())
             for line in l1.lines]
    assert drawn == [((0.5, 0.5), (-0.5, 0.5), "-"),    # c = 1, right of p = 1
                     ((0.5, 1.5), (0.5, 0.5), "--"),    # to c = 2's, a lower bound
                     ((1.5, 1.5), (0.5, 1.5), "--")]    # c = 2 right of p = 2; c = 3 none
    # every colour explained: the limit, its lower bound, and grey for what was not run
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "memory limit (mean loss < 0.05 up to here)",
        "at least this far (the next position was not run)", "not run"]
    alone = plot_heatmaps(t, "mean")   # without the grid: only what was run
    assert len(alone.axes) == 2 and alone.axes[0].images[0].get_array().shape == (3, 3)


# ---------------------------------------------------------------------------------------------
# The report of a results folder


def _results(uri: Path, losses: dict[tuple[int, int], float], seeds=(0, 1), q_max=15) -> dict:
    """A tiny results folder: rnn l=1, c and p as in `losses` (the axes: c in {1, 2}, p in 1..3
    unless `losses` has others), the given points; random length q in 10..15, or fixed length
    q = 10 with ``q_max=10``."""
    axes = {"arch": ["rnn"], "layers": [1],
            "cells": sorted({1, 2} if q_max == 15 else {c for c, _ in losses}),
            "position": sorted({1, 2, 3} if q_max == 15 else {p for _, p in losses}),
            "seed": list(seeds)}
    fixed = {"max_epochs": 50, "q_max": q_max}
    write_grid_identity(str(uri), {"name": "tiny", "axes": axes, "fixed": fixed})
    rows, curves = [], []
    for (c, p), loss in losses.items():
        for s in seeds:
            pt = Point(arch="rnn", layers=1, cells=c, position=p, seed=s, max_epochs=50,
                       q_max=q_max)
            rows.append(point_settings(pt, "tiny") | dict(
                units=pt.units, params=pt.params, epochs=50, loss=loss, best_loss=loss,
                stop_reason="solved" if loss < 0.01 else "max_epochs", r2=1 - 4 * loss,
                mc_stream=None, wall_s=1.0, pack_id="pack0", device="cpu",
                memgrid_version="test", finished_at=None))
            curves += [dict(point_id=pt.point_id, epoch=e, train_loss=0.3, eval_loss=v)
                       for e, v in ((0, 0.3), (50, loss))]
    write_points(str(uri), "pack0-0", rows, curves)
    return axes


def test_report_partial_grid(tmp_path, capsys):
    res = tmp_path / "results"
    # c=1 done (limit 1), c=2 only p = 1, 2 so far (limit 2, censored): 10 of 12 points
    _results(res, {(1, 1): 0.005, (1, 2): 0.2, (1, 3): 0.25, (2, 1): 0.005, (2, 2): 0.02})
    path = write_report(str(res), tmp_path / "report")
    assert capsys.readouterr() == ("", "")
    text = path.read_text()
    assert path == tmp_path / "report" / "report.md"
    assert "Points done: **10 of 12**" in text
    assert text.index("## Summary") < text.index("## Settings") < text.index("## Grid")
    assert "| 1 | 1 |\n| 2 | >= 2 |" in text          # the summary grid: c = 2 is censored
    assert "| rnn | 1 | 1 | 1 | 1 | 1 | 1..1 (median 1) | 2/2 | 1 | 1 | loss |" in text
    # p = 3 of c = 2 is in the grid but not trained yet: the limit is censored by it, not by
    # the grid's end
    assert "| rnn | 1 | 2 | 2 | 2 | >= 2 | 2..2 (median 2) | 2/2 | 1 | 1 | missing |" in text
    assert ("censored by the grid's largest p in 0 (a lower bound, `>= p`), and by a position "
            "not measured yet in 1.") in text
    limits = pd.read_csv(tmp_path / "report" / "limits.csv")
    assert limits["limit_text"].tolist() == ["1", ">= 2"]
    assert limits["seeds_passing"].tolist() == ["2 0 0", "2 2"]
    assert limits["converged"].tolist() == ["unchecked", "unchecked"]
    assert "| max_epochs | solved |" in text.replace("| arch ", "")
    for png in ("heatmap_mean_random.png", "heatmap_std_random.png",
                "limits_vs_units_random.png", "curves_rnn_l1_c1_random.png"):
        assert f"]({png})" in text and (tmp_path / "report" / png).exists()
    assert "### Paper claims" in text and "not covered by this grid" in text
    assert "Configurations whose limit reaches N: **2 of 2** (0 censored below N)." in text   # N = c


def test_report_says_a_limit_at_the_grids_largest_p_is_censored_by_it(tmp_path):
    """c = 2 passes every p of the grid (1..3): its limit is censored by the grid's end."""
    res = tmp_path / "results"
    _results(res, {(1, 1): 0.005, (1, 2): 0.2, (1, 3): 0.25,
                   (2, 1): 0.005, (2, 2): 0.02, (2, 3): 0.03})
    text = write_report(str(res), tmp_path / "report").read_text()
    assert "| rnn | 1 | 2 | 2 | 2 | >= 3 | 3..3 (median 3) | 2/2 | 1 | 1 | end |" in text
    assert "censored by the grid's largest p in 1 (a lower bound, `>= p`)." in text


def test_report_without_points(tmp_path):
    res = tmp_path / "results"
    write_grid_identity(str(res), {"name": "tiny", "axes": {"arch": ["rnn"], "layers": [1],
                                   "cells": [1], "position": [1, 2], "seed": [0]}, "fixed": {}})
    text = write_report(str(res), tmp_path / "out").read_text()
    assert "Points done: **0 of 2**" in text and "No points yet" in text
    text = write_report(str(tmp_path / "nothing"), tmp_path / "out2").read_text()
    assert "No `grid.json`" in text and "No points yet" in text


def test_figure_scripts(tmp_path):
    res = tmp_path / "results"
    _results(res, {(c, p): 0.005 if p <= c else 0.25 for c in (1, 2) for p in (1, 2, 3)})
    for name in ("fig6_heatmap", "fig7_std", "limits_vs_units"):
        main = runpy.run_path(str(ROOT / "analysis" / f"{name}.py"))["main"]
        main([str(res), "--out", str(tmp_path / "figs")])
        assert (tmp_path / "figs" / f"{name}.png").exists()
    main = runpy.run_path(str(ROOT / "analysis" / "fig4_curves.py"))["main"]
    main([str(res), "--out", str(tmp_path / "figs"), "--cells", "2"])
    assert (tmp_path / "figs" / "fig4_curves.png").exists()
    fig9 = runpy.run_path(str(ROOT / "analysis" / "fig9_heatmap.py"))["main"]
    with pytest.raises(SystemExit):  # no fixed-length points in this folder
        fig9([str(res)])
    fixed = tmp_path / "fixed"
    _results(fixed, {(1, 1): 0.005, (1, 2): 0.005}, q_max=10)      # c = 1, p = 1, 2
    fig9([str(fixed), "--random", str(res), "--out", str(tmp_path / "figs")])
    assert (tmp_path / "figs" / "fig9_heatmap.png").exists()
    assert (tmp_path / "figs" / "fig9_heatmap_random.png").exists()
    # the random-length points are cut to the fixed-length grid's (l, c, p): one c, two p
    shape = {"layers": [1], "cells": [1], "position": [1, 2]}
    fig = heatmap(str(res), ("rnn",), "mean", False, shape=shape)
    assert fig.axes[0].images[0].get_array().tolist() == [[0.005, 0.25]]
    with pytest.raises(SystemExit, match="inside the grid drawn beside them"):
        heatmap(str(res), ("rnn",), "mean", False, shape=shape | {"cells": [7]})


def test_figures_of_a_grid_still_running_show_the_whole_grid(tmp_path):
    res = tmp_path / "results"
    axes = _results(res, {(1, 1): 0.005, (1, 2): 0.2, (2, 1): 0.005})   # all of them l = 1
    write_grid_identity(str(res), {"name": "tiny", "axes": axes | {"layers": [1, 2]},
                                   "fixed": {"max_epochs": 50}})
    write_report(str(res), tmp_path / "report")
    main = runpy.run_path(str(ROOT / "analysis" / "fig6_heatmap.py"))["main"]
    main([str(res), "--out", str(tmp_path / "figs")])
    two_panels = round((3.2 * 2 + 1.2) * 150)   # plot_heatmaps' width at save's 150 dpi
    for png in (tmp_path / "report" / "heatmap_mean_random.png",
                tmp_path / "figs" / "fig6_heatmap.png"):
        assert matplotlib.image.imread(png).shape[1] == two_panels


def _two_runs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """One grid twice: `a` complete (c = 1, 2, p = 1..3, 3 seeds), `b` still running."""
    a = pd.concat([points({1: 0.01, 2: 0.2, 3: 0.25}, cells=1),
                   points({1: 0.01, 2: 0.01, 3: 0.2}, cells=2)])
    b = pd.concat([points({1: 0.01, 2: 0.01, 3: 0.01}, cells=1),
                   points({1: 0.01}, cells=2),             # p = 2, 3 not in yet
                   points({2: [0.01, 0.01]}, cells=1).assign(seed=[0, 1], cells=3)])  # 2 seeds
    b["mc_stream"] = [5.0] + [0.5] * (len(b) - 1)         # one network above its N = 1
    return a, b


def test_variant_columns_are_settings_that_vary_inside_a_configuration():
    a, _ = _two_runs()
    a = a.assign(lr=0.01, q_min=10, q_max=15)
    assert variant_columns(a) == []
    assert variant_columns(a.assign(lr=a["cells"].map({1: 0.01, 2: 0.003}))) == []  # tuned
    axis = pd.concat([a, a.assign(lr=0.1)])                                   # an lr axis
    assert variant_columns(axis) == ["lr"]
    fixed = pd.concat([a, a.assign(q_min=10, q_max=10)])                      # Figure 9's pair
    assert variant_columns(fixed) == ["q_max"]
    assert variant_columns(fixed.assign(lr=None)) == ["q_max"]                # nulls: one value
    assert variant_columns(a.iloc[:0]) == []
    # a mean over seeds never mixes the two rates of one configuration
    assert mean_losses(axis).groupby(["cells", "position"]).size().max() == 2


def test_compare_runs_on_what_both_hold():
    a, b = _two_runs()
    means, limits = compare_runs(a, b)
    got = {(r.cells, r.position): (round(r.mean_a, 12), round(r.mean_b, 12), r.memorized_a,
                                   r.memorized_b) for r in means.itertuples()}
    assert got == {(1, 1): (0.01, 0.01, True, True), (1, 2): (0.2, 0.01, False, True),
                   (1, 3): (0.25, 0.01, False, True), (2, 1): (0.01, 0.01, True, True)}
    assert limits.to_dict("records") == [
        dict(arch="rnn", layers=1, cells=1, units=1, bound=1, limit_a=1, limit_b=3,
             censored_a=False, censored_b=True, cut=False),
        # c = 2: b holds p = 1 only, so both walk p = 1 alone: a's limit 2 is cut to 1+
        dict(arch="rnn", layers=1, cells=2, units=2, bound=2, limit_a=1, limit_b=1,
             censored_a=True, censored_b=True, cut=True)]
    tuned = a.assign(lr=a["cells"].map({1: 0.01, 2: 0.003}))    # one rate per configuration
    assert compare_runs(tuned, b)[1]["limit_a"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="varies lr"):
        compare_runs(pd.concat([a, a.assign(lr=0.1)]).assign(lr=lambda d: d["lr"].fillna(0.01)), b)
    # a check on some of the seeds is compared on those, paired: b's seeds 0, 1 only
    two = b[b["seed"] < 2]
    means, limits = compare_runs(a, two)
    assert round(means.set_index(["cells", "position"]).loc[(1, 2), "mean_a"], 12) == 0.2
    a_pair = a.assign(loss=a["loss"].where(a["seed"] < 2, 0.25))   # seed 2 of a fails: unseen
    assert compare_runs(a_pair, two)[0].equals(means)
    assert len(means) == 4 and limits["limit_b"].tolist() == [3, 1]


def test_protocols_side_by_side_script(tmp_path):
    script = runpy.run_path(str(ROOT / "analysis" / "protocols_side_by_side.py"))
    text = script["side_by_side"](*_two_runs(), ("paper", "converged"))
    assert "with all 3 seeds in both (the seeds both have: 0..2): **4**" in text
    assert ("below 0.05: paper **2**, converged **4**; both 2, only paper 0, only converged 2"
            in text)
    assert "| 2 | 1 | 0 | 1 |" in text and "| 1 | 2 | 2 | 2 |" in text   # p, (l, c), paper, conv.
    assert "| rnn | 1 | 1 | 1 | 1 | 1 | 3+ | 2+ |" in text   # c = 1: limit 1 -> 3, the last p
    assert "converged: stream MC above N in 1 of 14 networks" in text
    res = tmp_path / "results"
    _results(res, {(1, 1): 0.005})
    with pytest.raises(SystemExit, match="no points"):
        script["main"]([str(res), str(tmp_path / "nothing")])


def test_ship_points_writes_a_folder_that_reads_as_the_run(tmp_path):
    import pyarrow.parquet as pq

    from memgrid.results import SCHEMA_VERSION, check_results, schema_version

    res, dest = tmp_path / "results", tmp_path / "shipped"
    _results(res, {(1, 1): 0.005, (1, 2): 0.2, (2, 1): 0.3})
    main = runpy.run_path(str(ROOT / "analysis" / "ship_points.py"))["main"]
    main([str(res), str(dest), "--curves"])
    check_results(str(dest))
    key = ["point_id", "epoch"]
    assert load_points(str(dest)).sort_values("point_id", ignore_index=True).equals(
        load_points(str(res)).sort_values("point_id", ignore_index=True))
    assert load_curves(str(dest)).sort_values(key, ignore_index=True).equals(
        load_curves(str(res)).sort_values(key, ignore_index=True))
    for table in ("points", "curves"):                # a part per arch
        assert [f.name for f in (dest / table).iterdir()] == ["part-rnn.parquet"]
        assert schema_version(pq.read_schema(dest / table / "part-rnn.parquet")) == SCHEMA_VERSION
    again = tmp_path / "again"                       # a cell's part: the same bytes every time
    main([str(res), str(again), "--curves"])
    for table in ("points", "curves"):
        assert (again / table / "part-rnn.parquet").read_bytes() == \
            (dest / table / "part-rnn.parquet").read_bytes()
    main([str(res), str(dest)])                      # without --curves: none
    assert not (dest / "curves").exists() and len(load_points(str(dest))) == 6
    _results(res / "tuning", {(2, 3): 0.1})          # a tuned grid's tuning run goes along
    main([str(res), str(dest)])
    assert load_points(str(dest / "tuning"))["point_id"].tolist() == \
        load_points(str(res / "tuning"))["point_id"].tolist() and len(load_points(str(dest))) == 6


def test_ship_points_thins_a_large_grids_curves(tmp_path):
    """--curves-every K keeps a point's first K evaluations, every K-th one, its last and its
    first below the threshold: against a plain loop over each curve. A folder without curves,
    or a run without the plateau stop (whose curves replay its shorter budgets), is refused
    and nothing written; a folder shipped into itself is read whole first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    script = runpy.run_path(str(ROOT / "analysis" / "ship_points.py"))
    rng = np.random.default_rng(0)
    curves = pd.DataFrame([dict(point_id=f"p{i}", epoch=25 * e, train_loss=0.3,
                                eval_loss=float(v))
                           for i, n in enumerate([1, 2, 5, 9, 13, 40])
                           for e, v in enumerate(np.sort(rng.uniform(0, 0.3, n))[::-1])])
    each = {f"p{i}": 25 for i in range(6)}                # eval_every of every point
    for every in (1, 2, 4, 7):
        kept = script["thin"](curves, every, each, threshold=0.1)
        want = []
        for _, c in curves.groupby("point_id", sort=False):
            losses = c["eval_loss"].tolist()
            below = [j for j, v in enumerate(losses) if v < 0.1][:1]
            want += [c.index[j] for j in range(len(c))
                     if j < every or j % every == 0 or j == len(c) - 1 or j in below]
        assert kept.index.tolist() == want, every
        # thinned again (a run resumed from a shipped folder, shipped again): the same rows
        assert script["thin"](kept, every, each, threshold=0.1).index.tolist() == want, every
    assert len(script["thin"](curves, 4, each, 0.1)) < len(curves)
    res, dest = tmp_path / "results", tmp_path / "shipped"
    _results(res, {(1, 1): 0.005, (1, 2): 0.2})
    script["main"]([str(res), str(dest), "--curves-every", "3"])   # two evaluations each: all
    key = ["point_id", "epoch"]
    assert load_curves(str(dest)).sort_values(key, ignore_index=True).equals(
        load_curves(str(res)).sort_values(key, ignore_index=True))
    with pytest.raises(SystemExit):
        script["main"]([str(res), str(tmp_path / "none"), "--curves-every", "0"])
    script["main"]([str(res), str(dest)])                  # shipped without its curves
    with pytest.raises(SystemExit, match="no curves to ship"):
        script["main"]([str(dest), str(tmp_path / "none"), "--curves"])
    assert not (tmp_path / "none").exists()
    noplateau = tmp_path / "noplateau"
    _results(noplateau, {(1, 1): 0.005})
    table = pq.read_table(noplateau / "points" / "pack0-0.parquet")
    pq.write_table(table.set_column(table.schema.get_field_index("plateau"), "plateau",
                                    pa.array([False] * len(table))),
                   noplateau / "points" / "pack0-0.parquet")
    with pytest.raises(SystemExit, match="ship them whole"):    # its curves are replayed
        script["main"]([str(noplateau), str(tmp_path / "none"), "--curves-every", "2"])
    script["main"]([str(dest), str(dest)])                 # into itself: read, then replaced
    assert load_points(str(dest)).sort_values("point_id", ignore_index=True).equals(
        load_points(str(res)).sort_values("point_id", ignore_index=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noplateau", "results", "shipped"]


def test_lr_by_size_draws_the_loss_against_the_rate_per_size():
    plot = runpy.run_path(str(ROOT / "analysis" / "lr_by_size.py"))["plot_lr_by_size"]
    t = pd.concat([points({5: 0.01 * l + lr, 10: 0.2}, layers=l, cells=c, lr=lr)
                   for l in (1, 2) for c in (5, 10) for lr in (0.001, 0.01)])
    fig = plot(t, "rnn")
    assert len(fig.axes) == 2 * 2           # (p = 5, 10) x (c = 5, 10)
    first = fig.axes[0]                     # p = 5, c = 5: one line per l, x = lr
    assert [list(line.get_xdata()) for line in first.lines[:2]] == [[0.001, 0.01]] * 2
    assert np.allclose(first.lines[1].get_ydata(), [0.021, 0.03])   # l = 2
    with pytest.raises(SystemExit):
        plot(t[t["lr"] == 0.01], "rnn")       # one rate: nothing to compare


def test_tuned_rates_reads_the_choice_of_a_tuning_run(tmp_path, capsys):
    from memgrid.grid_file import parse_grid
    from memgrid.lr_tuning import tuning_points

    res = tmp_path / "results"
    grid = parse_grid({"name": "tuned", "axes": {"arch": ["rnn"], "layers": [1], "cells": [2, 3],
                                                 "position": [1, 2], "seed": [0]},
                       "tune_lr": {"candidates": [0.01, 0.1], "seeds": [1000], "rungs": 0}})
    write_grid_identity(str(res), grid.identity)
    rows = []
    for p in tuning_points(grid.points(), grid.tune_lr):
        if p.cells == 3 and p.position == 2:
            continue                                   # c = 3: its tuning not done yet
        loss = 0.005 if p.lr == 0.01 else 0.2          # 0.01 memorizes, 0.1 does not
        rows.append(point_settings(p, "tuned") | dict(
            units=p.units, params=p.params, epochs=50, loss=loss, best_loss=loss, r2=0.5,
            stop_reason="solved" if loss < 0.01 else "max_epochs", mc_stream=None, wall_s=1.0,
            pack_id="pack0", device="cpu", memgrid_version="test", finished_at=None))
    write_points(str(res / "tuning"), "pack0-0", rows, [])
    script = runpy.run_path(str(ROOT / "analysis" / "tuned_rates.py"))
    rates = script["chosen_rates"](str(res)).set_index("cells")["lr"]
    assert rates[2] == 0.01 and math.isnan(rates[3])
    script["main"]([str(res)])
    out = capsys.readouterr().out
    assert "(1 of 2 done)" in out and "| 1 | 0.01 | .. |" in out and "0.01 by 1" in out


def test_report_of_a_tuned_grid_names_its_protocol_and_the_rates_it_chose(tmp_path):
    import dataclasses

    from memgrid.grid_file import parse_grid

    res = tmp_path / "results"
    grid = parse_grid({"name": "tuned", "axes": {"arch": ["rnn"], "layers": [1], "cells": [2, 3],
                                                 "position": [1, 2], "seed": [0, 1]},
                       "tune_lr": {"candidates": [0.003, 0.01], "seeds": [1000]}})
    write_grid_identity(str(res), grid.identity)
    rows = []
    for p in grid.points():
        p = dataclasses.replace(p, lr={2: 0.01, 3: 0.003}[p.cells])    # the chosen rates
        rows.append(point_settings(p, "tuned") | dict(
            units=p.units, params=p.params, epochs=50, loss=0.005, best_loss=0.005, r2=0.9,
            stop_reason="solved", mc_stream=None, wall_s=1.0, pack_id="pack0", device="cpu",
            memgrid_version="test", finished_at=None))
    write_points(str(res), "pack0-0", rows, [])
    text = write_report(str(res), tmp_path / "out").read_text()
    assert ("Learning rate tuned: best of lr 0.003, 0.01 on seeds 1000 (successive halving, "
            "eta 2, 2 rungs); chosen: 0.01 by 1, 0.003 by 1 of 2 configurations") in text
    assert "Protocol: `converged`, its lr tuned per configuration (Grid, above)." in text
    assert "### Paper claims (protocol converged, its lr tuned per configuration)" in text
    assert "varies" not in text                   # one rate per configuration is no variant
    # the same rows read without the tuning: the rate that is not the protocol's is custom
    identity = {k: v for k, v in grid.identity.items() if k != "tune_lr"}
    write_grid_identity(str(res), identity)
    text = write_report(str(res), tmp_path / "out2").read_text()
    assert "Protocol: `converged`, `custom`." in text and "Learning rate tuned" not in text


def test_report_of_a_no_plateau_run_says_what_the_stop_would_change(tmp_path):
    """Two points: one flat at 0.25 for 3000 epochs (the default stop, patience 2000, would end
    it at epoch 2000), one that learns (untouched)."""
    res = tmp_path / "results"
    write_grid_identity(str(res), {"name": "np", "axes": {"arch": ["rnn"], "layers": [1], "cells": [2],
                                   "position": [1, 2], "seed": [0]}, "fixed": {"plateau": False}})
    rows, curves = [], []
    for p, final in ((1, 0.02), (2, 0.25)):       # 0.02: above solved_loss, as a real run
        pt = Point(arch="rnn", layers=1, cells=2, position=p, seed=0, plateau=False, max_epochs=3000)
        evals = [(e, 0.25 if p == 2 or e < 500 else final) for e in range(0, 3001, 100)]
        rows.append(point_settings(pt, "np") | dict(
            units=2, params=pt.params, epochs=3000, loss=final, best_loss=final, r2=0.5,
            stop_reason="max_epochs", mc_stream=None, wall_s=1.0, pack_id="p", device="cpu",
            memgrid_version="test", finished_at=None))
        curves += [dict(point_id=pt.point_id, epoch=e, train_loss=v, eval_loss=v) for e, v in evals]
    write_points(str(res), "p-0", rows, curves)
    text = write_report(str(res), tmp_path / "out").read_text()
    assert "## What the plateau stop would change" in text
    assert "1 of 2 points would stop at the plateau, saving 17% of the epochs" in text  # 1000 of 6000
    assert "(lost 0, gained 0)" in text


def test_every_cell_has_its_own_colour_that_reads_on_white():
    """Each built-in cell's colour is its own (as RGB, not only as a name), no user's cell gets
    one of them, and every line stands out from the white of the axes: a contrast ratio of at
    least 2 (WCAG's relative luminance; gold, 1.4, fails)."""
    import matplotlib.colors

    from memgrid.analysis.plots import _USER_COLORS, ARCH_COLORS, arch_color

    def contrast_on_white(c):
        lin = [x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4
               for x in matplotlib.colors.to_rgb(c)]
        return 1.05 / (0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2] + 0.05)

    builtin = [matplotlib.colors.to_hex(c) for c in ARCH_COLORS.values()]
    users = [matplotlib.colors.to_hex(c) for c in _USER_COLORS]
    assert len(set(builtin)) == len(builtin) and len(set(users)) == len(users)
    assert not set(builtin) & set(users)
    weak = {c: round(contrast_on_white(c), 2) for c in [*ARCH_COLORS.values(), *_USER_COLORS]
            if contrast_on_white(c) < 2}
    assert not weak, weak
    assert contrast_on_white("gold") < 2 and contrast_on_white("black") == pytest.approx(21)
    assert arch_color("a.py:CELL", ["a.py:CELL", "rnn"]) == _USER_COLORS[0]
