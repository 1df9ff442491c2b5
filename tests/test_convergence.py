"""Convergence of memory-distance limits over the training budget, on hand-made tables with
known answers, and the budget replay of one long run against real training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from memgrid.analysis import (budget_convergence, budget_rungs, converged_budget, limit_marks,
                              limits_by_budget, plot_limits_by_budget, score_budgets)
from memgrid.config import Point
from memgrid.train import train_points


def table(budgets: dict[int, dict[int, float | list[float]]], arch="rnn", layers=1, cells=4,
          spe=1, **settings) -> pd.DataFrame:
    """Points of one configuration: budgets[max_epochs][p] = loss per seed (list) or for seeds
    0..2."""
    rows = []
    for max_epochs, losses in budgets.items():
        for p, ls in losses.items():
            ls = ls if isinstance(ls, list) else [ls] * 3
            for seed, loss in enumerate(ls):
                rows.append(dict(arch=arch, layers=layers, cells=cells, position=p, seed=seed,
                                 q_min=10, q_max=15, loss=loss, steps_per_epoch=spe,
                                 max_epochs=max_epochs, **settings))
    return pd.DataFrame(rows)


LEARNS_LATE = {  # p = 3 gets memorized only at 4000 epochs; p = 2's loss is still falling at 2000
    1000: {1: 0.01, 2: 0.045, 3: 0.2, 4: 0.25},
    2000: {1: 0.01, 2: 0.03, 3: 0.15, 4: 0.25},
    4000: {1: 0.01, 2: 0.01, 3: 0.02, 4: 0.25},
    8000: {1: 0.01, 2: 0.01, 3: 0.015, 4: 0.24},
}


def test_converged_only_where_doubling_moves_neither_limit_nor_loss():
    conv = budget_convergence(table(LEARNS_LATE)).set_index("budget")
    assert conv["limit"].tolist() == [2, 2, 3, 3]
    assert conv["next_budget"].tolist()[:3] == [2000, 4000, 8000]
    # 1000 -> 2000: same limit, but the loss at p = 2 fell by 0.015 > LOSS_TOL
    assert conv.loc[1000, "loss_change"] == pytest.approx(-0.015)
    assert conv.loc[1000, "status"] == "not converged"
    assert conv.loc[2000, "status"] == "not converged"      # the limit moved to 3
    assert conv.loc[4000, "status"] == "converged"          # 3 -> 3, 0.02 -> 0.015
    assert conv.loc[8000, "status"] == "unknown"            # nothing >= 16000 to tell
    assert pd.isna(conv.loc[8000, "converged"])
    # the 8000 limit equals a limit that doubling did not move
    assert limit_marks(conv.reset_index()).tolist() == ["not converged", "not converged",
                                                        "converged", "converged"]
    cb = converged_budget(conv.reset_index()).iloc[0]
    assert (cb["from_budget"], cb["limit"], cb["checked_up_to"]) == (4000, 3, 8000)


def test_a_limit_that_rests_then_moves_is_not_converged():
    """2 -> 2 passes one doubling, then 4000 moves it to 3: only 4000 on is converged."""
    t = table({1000: {1: 0.01, 2: 0.02, 3: 0.2}, 2000: {1: 0.01, 2: 0.02, 3: 0.2},
               4000: {1: 0.01, 2: 0.01, 3: 0.01}, 8000: {1: 0.01, 2: 0.01, 3: 0.01}})
    conv = budget_convergence(t)
    assert conv["status"].tolist() == ["converged", "not converged", "converged", "unknown"]
    assert limit_marks(conv).tolist() == ["not converged", "not converged", "converged",
                                          "converged"]
    # still moving at the largest budget: not converged there either
    moving = budget_convergence(table({1000: {1: 0.01, 2: 0.2}, 2000: {1: 0.01, 2: 0.01}}))
    assert limit_marks(moving).tolist() == ["not converged", "not converged"]
    # one budget only: nothing to tell
    one = budget_convergence(table({1000: {1: 0.01}}))
    assert limit_marks(one).tolist() == ["unknown"]
    assert np.isnan(converged_budget(one).iloc[0]["from_budget"])


def test_tolerance_and_factor_are_settings():
    conv = budget_convergence(table(LEARNS_LATE), loss_tol=0.02).set_index("budget")
    assert conv.loc[1000, "status"] == "converged"           # |-0.015| <= 0.02
    # min_factor 4: 1000 is checked against 4000 (limit 3), 2000 against 8000
    conv = budget_convergence(table(LEARNS_LATE), min_factor=4).set_index("budget")
    assert conv["next_budget"].tolist()[:2] == [4000, 8000]
    assert conv["status"].tolist() == ["not converged", "not converged", "unknown", "unknown"]


def test_budget_is_steps_and_configurations_stay_apart():
    # 8 steps x 500 epochs == 4000 steps: the same budget as 1 step x 4000 epochs
    spe8 = table({500: LEARNS_LATE[4000]}, spe=8)
    one = table({2000: LEARNS_LATE[2000]})
    lim = limits_by_budget(pd.concat([spe8, one]))
    assert dict(zip(lim["budget"], lim["limit"])) == {2000: 2, 4000: 3}
    conv = budget_convergence(pd.concat([spe8, one]))
    assert conv["status"].tolist() == ["not converged", "unknown"]
    # another lr is another configuration: never compared with this one
    other = table({1000: {1: 0.01, 2: 0.3}, 2000: {1: 0.01, 2: 0.3}}, lr=0.03)
    both = pd.concat([table(LEARNS_LATE, lr=0.003), other])
    conv = budget_convergence(both)
    assert sorted(conv.groupby("lr").size().items()) == [(0.003, 4), (0.03, 2)]
    assert conv[conv["lr"] == 0.03]["status"].tolist() == ["converged", "unknown"]


def test_a_diverged_seed_and_limit_zero():
    t = table({1000: {1: [0.01, 0.01, float("nan")], 2: 0.3},
               2000: {1: 0.3, 2: 0.3}})
    conv = budget_convergence(t).set_index("budget")
    assert conv.loc[1000, "limit"] == 0 and conv.loc[2000, "limit"] == 0
    assert conv.loc[1000, "status"] == "converged"     # 0 -> 0: no loss at a limit to compare
    assert np.isnan(conv.loc[1000, "loss_change"])


def test_empty_table():
    assert budget_convergence(table({})).empty


def test_budget_rungs_replay_equals_shorter_runs():
    """One run to 240 epochs without the plateau stop, replayed at 60 and 120, gives exactly
    the rows that training to 60 and 120 gives (determinism and pack invariance)."""
    base = Point(arch="rnn", layers=1, cells=2, position=1, seed=0, q_min=4, q_max=6,
                 batch_size=32, max_epochs=240, eval_size=128, eval_every=20, plateau=False,
                 solved_loss=0.0, mc_length=0, lr=0.03)
    pts = [dataclasses.replace(base, position=p, seed=s) for p in (1, 2) for s in (0, 1)]
    rows, curves = train_points(pts)
    rungs = budget_rungs(pd.DataFrame(rows), pd.DataFrame(curves), factors=(4, 2, 1, 7))
    assert sorted(rungs["max_epochs"].unique()) == [60, 120, 240]   # 240 / 7 is no evaluation
    for e in (60, 120):
        short, _ = train_points([dataclasses.replace(p, max_epochs=e) for p in pts])
        got = rungs[rungs["max_epochs"] == e].sort_values(["position", "seed"])
        want = pd.DataFrame(short).sort_values(["position", "seed"])
        assert got["loss"].tolist() == want["loss"].tolist()
        assert got["epochs"].tolist() == want["epochs"].tolist() == [e] * 4
        assert got["r2"].isna().all()        # measured at 240, not at e
    with pytest.raises(ValueError, match="plateau"):
        budget_rungs(pd.DataFrame(rows).assign(plateau=True), pd.DataFrame(curves))


def test_a_cosine_run_is_not_replayed_at_shorter_budgets():
    """Under `lr_schedule: cosine` the rate decays over the run's own budget: the run to 240
    epochs at its epoch 60 is not the run to 60, so budget_rungs refuses it."""
    p = Point(arch="rnn", layers=1, cells=2, position=1, seed=0, q_min=4, q_max=6, batch_size=32,
              max_epochs=240, eval_size=128, eval_every=20, plateau=False, solved_loss=0.0,
              mc_length=0, lr=0.03, lr_schedule="cosine")
    rows, curves = train_points([p])
    curves = pd.DataFrame(curves)
    short, _ = train_points([dataclasses.replace(p, max_epochs=60)])
    at_60 = curves.loc[curves["epoch"] == 60, "eval_loss"].item()
    assert abs(at_60 - short[0]["loss"]) > 1e-4
    with pytest.raises(ValueError, match="cosine"):
        budget_rungs(pd.DataFrame(rows), curves)


def _search_table(lr: float, learns_at: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """rnn l=1 c=2, 3 seeds, run to 8000 epochs without the plateau stop, evaluated every 1000:
    p = 1 memorized from the first evaluation, p = 2 from `learns_at`, p = 3 never."""
    rows, curves = [], []
    for p in (1, 2, 3):
        for seed in range(3):
            pid = f"{lr}-{p}-{seed}"
            first = {1: 1000, 2: learns_at, 3: 10**9}[p]
            evals = [(e, 0.25 if e < first else 0.005) for e in range(0, 8001, 1000)]
            rows.append(dict(point_id=pid, arch="rnn", layers=1, cells=2, position=p, seed=seed,
                             q_min=10, q_max=15, lr=lr, steps_per_epoch=1, max_epochs=8000,
                             eval_every=1000, plateau=False, solved_loss=0.0, plateau_loss=0.25,
                             plateau_tol=0.01, patience=2000, epochs=8000,
                             stop_reason="max_epochs", loss=evals[-1][1], best_loss=0.005,
                             r2=0.9))
            curves += [dict(point_id=pid, epoch=e, train_loss=v, eval_loss=v) for e, v in evals]
    return pd.DataFrame(rows), pd.DataFrame(curves)


def test_score_budgets_of_a_search():
    (a, ca), (b, cb) = _search_table(0.01, 3000), _search_table(0.1, 1000)
    table = score_budgets(pd.concat([a, b]), pd.concat([ca, cb])).set_index(["lr", "budget"])
    assert sorted(table.index) == [(lr, e) for lr in (0.01, 0.1) for e in (1000, 2000, 4000, 8000)]
    # lr 0.01 memorizes p = c = 2 from epoch 3000: below the paper's 5000 a failure says nothing
    assert table.loc[(0.01, 2000), "Fig. 6"] == "not covered by this grid"
    assert table.loc[(0.01, 8000), "Fig. 6"] == "holds"
    assert table["converged"].loc[0.01].tolist() == [0.0, 0.0, 1.0, 1.0]   # from 4000 on
    assert table["converged"].loc[0.1].tolist() == [1.0, 1.0, 1.0, 1.0]
    # one setting only (lr is no variant then), and the replayed table scored without curves
    one = score_budgets(a, ca, by=["lr"])
    assert one["converged"].tolist() == [0.0, 0.0, 1.0, 1.0]
    again = score_budgets(budget_rungs(a, ca), None, by=["lr"])
    assert again.drop(columns="converged").equals(one.drop(columns="converged"))
    assert again["converged"].tolist() == one["converged"].tolist()


def test_plot_limits_by_budget():
    conv = budget_convergence(pd.concat([table(LEARNS_LATE), table(LEARNS_LATE, cells=6)]))
    fig = plot_limits_by_budget(conv.assign(mark=limit_marks(conv)))
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and ax.get_xscale() == "log"
    assert ax.lines[0].get_ydata().tolist() == [2, 2, 3, 3]
    with pytest.raises(ValueError):
        plot_limits_by_budget(conv.iloc[:0])
    # the limits figure carries the mark: a cross on a limit that more training moves
    from memgrid.analysis import plot_limits_vs_units
    last = pd.concat([table({8000: LEARNS_LATE[8000]}), table({8000: LEARNS_LATE[8000]}, cells=6)])
    last = last.assign(r2=0.5, units=last["cells"])
    fig = plot_limits_vs_units(last, converged={("rnn", 1, 4): "converged",
                                                ("rnn", 1, 6): "not converged"})
    assert "budget check: 1 of 2 converged, 1 moved" in fig.axes[0].get_title()
    crosses = [c for c in fig.axes[0].collections if c.get_offsets().shape[0] and
               c.get_paths() and hasattr(c, "get_sizes") and c.get_sizes().tolist() == [70]]
    assert [c.get_offsets().shape[0] for c in crosses] == [1]


def test_a_budget_check_on_the_first_positions_of_a_grid():
    """A check that trains only p <= 4 of a grid's p <= 8 (its configurations' limits lie far
    below): compared on p = 1..4, a limit both walk to below 4 is judged; one that reaches p = 4
    in either says nothing of the run's own limit, and stays unchecked."""
    from memgrid.analysis.convergence import budget_check, check_marks
    from memgrid.analysis.limits import limits_with_seeds

    run = pd.concat([
        table({5000: {1: 0.01, 2: [0.01, 0.01, 0.2], 3: 0.2, 4: 0.2, 5: 0.2, 6: 0.2, 7: 0.2,
                      8: 0.2}}, cells=2),
        table({5000: {p: 0.01 if p <= 5 else 0.2 for p in range(1, 9)}}, cells=3)])
    check = pd.concat([table({10000: {1: 0.01, 2: 0.01, 3: 0.2, 4: 0.2}}, cells=2),
                       table({10000: {1: 0.01, 2: 0.01, 3: 0.01, 4: 0.01}}, cells=3)])
    got = budget_check(run, check).set_index("cells")
    assert got.loc[2, ["paired_limit", "check_limit", "move"]].tolist() == [1, 2, 1]
    assert np.isnan(got.loc[3, "move"]) and bool(got.loc[3, "check_censored"])
    limits = limits_with_seeds(run).reset_index(drop=True)
    marks = dict(zip(limits["cells"], check_marks(limits, got.reset_index())))
    assert marks == {2: "converged", 3: "unchecked"}    # c = 2: seeds' own limits 1..2


def test_a_walked_run_is_checked_on_the_positions_both_hold_with_every_seed():
    """A walk trains its last positions on the seeds that have not failed yet only: the run
    and its check are compared on the positions both hold with every seed (here 1..3 and
    1..4), where the check's limit reaches the last of them and is a lower bound. A move past
    the seeds' spread already is one (c = 2, spread 0: at least 1); one that may still end
    within it is no verdict (c = 3, spread 2: at least 2)."""
    from memgrid.analysis.convergence import budget_check, check_marks
    from memgrid.analysis.limits import limits_with_seeds

    run = pd.concat([
        table({5000: {1: 0.01, 2: 0.01, 3: 0.2, 4: 0.2}}, cells=2),
        table({5000: {1: 0.01, 2: 0.01, 3: [0.2, 0.2, 0.01], 4: [0.2, 0.2, 0.01], 5: 0.2}},
              cells=3)])
    run = run[(run["position"] < run["cells"] + 2) | (run["seed"] == 2)]   # the walk's last band
    check = pd.concat([table({10000: {p: 0.01 for p in range(1, 7)}}, cells=c) for c in (2, 3)])
    got = budget_check(run, check).set_index("cells")
    assert got[["paired_limit", "check_limit", "move_min", "move_max"]].to_dict("index") == {
        2: dict(paired_limit=2, check_limit=3, move_min=1, move_max=np.inf),
        3: dict(paired_limit=2, check_limit=4, move_min=2, move_max=np.inf)}
    assert got["check_censored"].all() and got["move"].isna().all()
    limits = limits_with_seeds(run).reset_index(drop=True)
    assert limits["seed_spread"].tolist() == [0, 2]
    marks = dict(zip(limits["cells"], check_marks(limits, got.reset_index())))
    assert marks == {2: "moves", 3: "unchecked"}
