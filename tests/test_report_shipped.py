"""The report of shipped folders, checked against the Parquet read with plain pandas.

Every number compared here is recomputed without memgrid's analysis functions: the limit of the
mean over seeds, each seed's own limit, the limit at a stricter threshold, a budget check's move
and the task MC, from `pandas.read_parquet` of docs/data/.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from memgrid.analysis import plot_heatmaps, plot_limits_vs_units, save, write_report
from memgrid.analysis.tables import load_points

DATA = Path(__file__).resolve().parents[1] / "docs" / "data"
TUNED = DATA / "fig6_rnn_tuned"
CHECKS = [DATA / "fig6_tuned_budget_check-2x", DATA / "fig6_tuned_budget_check_wide-2x"]


def _walk(losses: pd.Series, threshold: float) -> int:
    """Largest p with every loss at 1..p below threshold (`losses` indexed by p)."""
    p = 0
    while p + 1 in losses.index and losses[p + 1] < threshold:
        p += 1
    return p


def _plain_limits(folder: Path, threshold: float, seeds=None) -> dict:
    """(l, c) -> limit of the mean over seeds, from the Parquet alone."""
    t = pd.read_parquet(folder / "points")
    if seeds is not None:
        t = t[t["seed"].isin(seeds)]
    mean = t.groupby(["layers", "cells", "position"])["loss"].mean()
    return {(l, c): _walk(g.droplevel([0, 1]), threshold)
            for (l, c), g in mean.groupby(level=[0, 1])}


@pytest.fixture(scope="module")
def tuned_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    path = write_report(str(TUNED), out, budget_check=[str(c) for c in CHECKS])
    return out, path.read_text(), pd.read_csv(out / "limits.csv")


def test_every_limit_with_its_seeds_in_a_csv_and_the_summary_first(tuned_report):
    out, text, lim = tuned_report
    assert len(lim) == 100 and set(lim["task"]) == {"random"}
    for col in ("limit", "limit_text", "seed_limit_min", "seed_limit_median", "seed_limit_max",
                "seeds_reaching", "seeds_passing", "limit_censored", "limit_0.02", "limit_0.01",
                "converged", "units", "bound"):
        assert col in lim.columns
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Summary"
    assert "more rows not shown" not in text
    for name in ("capacity.csv", "claims.csv", "state_size.csv"):
        assert f"[{name}]({name})" in text and (out / name).exists()


def test_limits_recomputed_from_the_parquet(tuned_report):
    _, _, lim = tuned_report
    got = lim.set_index(["layers", "cells"])
    assert got["limit"].to_dict() == _plain_limits(TUNED, 0.05)
    assert got["limit_0.02"].to_dict() == _plain_limits(TUNED, 0.02)
    # at 0.02 the one-layer RNN's limit is c for c = 2..10
    assert [got.loc[(1, c), "limit_0.02"] for c in range(2, 11)] == list(range(2, 11))
    t = pd.read_parquet(TUNED / "points")
    for (l, c) in ((1, 8), (1, 9), (2, 5), (3, 20)):
        one = t[(t["layers"] == l) & (t["cells"] == c)]
        own = [_walk(g.set_index("position")["loss"], 0.05) for _, g in one.groupby("seed")]
        r = got.loc[(l, c)]
        assert (r["seed_limit_min"], r["seed_limit_max"]) == (min(own), max(own))
        assert r["seed_limit_median"] == np.median(own)
        assert r["seeds_reaching"] == sum(o >= r["limit"] for o in own)
        passing = (one[one["loss"] < 0.05].groupby("position").size()
                   .reindex(range(1, 21), fill_value=0))
        assert r["seeds_passing"] == " ".join(map(str, passing))
        censored = r["limit"] == one["position"].max()
        assert bool(r["limit_censored"]) == censored
        assert r["limit_text"] == (f">= {r['limit']}" if censored else str(r["limit"]))


def test_budget_check_recomputed_on_the_shared_seeds(tuned_report):
    _, _, lim = tuned_report
    got = lim.set_index(["layers", "cells"])
    check = pd.concat([pd.read_parquet(c / "points") for c in CHECKS])
    shared = sorted(set(check["seed"]))
    base = _plain_limits(TUNED, 0.05, shared)
    mean2 = check.groupby(["layers", "cells", "position"])["loss"].mean()
    for (l, c), g in mean2.groupby(level=[0, 1]):
        move = _walk(g.droplevel([0, 1]), 0.05) - base[(l, c)]
        r = got.loc[(l, c)]
        assert r["move"] == move
        spread = r["seed_limit_max"] - r["seed_limit_min"]
        assert r["converged"] == ("converged" if abs(move) <= spread else "moves")
    unchecked = set(got.index) - set(mean2.droplevel(2).index)
    assert (got.loc[sorted(unchecked), "converged"] == "unchecked").all()


def test_capacity_csv_recomputed(tuned_report):
    out, _, _ = tuned_report
    mc = pd.read_csv(out / "capacity.csv").set_index(["layers", "cells", "seed"])
    t = pd.read_parquet(TUNED / "points")
    plain = t.assign(r2=t["r2"].fillna(0).clip(0, 1)).groupby(["layers", "cells", "seed"])["r2"].sum()
    assert len(mc) == len(plain) == 500
    assert np.allclose(mc["mc"].sort_index(), plain.sort_index(), atol=1e-9)


def test_size_figure_fits_its_data_and_marks_censored_limits():
    t = load_points(str(TUNED))
    fig = plot_limits_vs_units(t)
    ax_lim, ax_mc = fig.axes[:2]
    assert 20 <= ax_lim.get_ylim()[1] <= 25 and ax_mc.get_ylim()[1] <= 25   # every point <= 20
    arrows = [a for a in ax_lim.texts if a.arrow_patch is not None]
    assert len(arrows) == 51          # one per censored limit
    # the bound N - (l - 1) is drawn first, one line per depth, each with its own dashes
    styles = {str(line._unscaled_dash_pattern) for line in ax_lim.lines[:5]}
    assert len(styles) == 5


def test_std_heatmap_has_its_own_scale_and_many_archs_share_rows(tmp_path):
    t = load_points(str(TUNED))
    std = plot_heatmaps(t, "std")
    assert std.axes[0].images[0].get_clim()[1] == pytest.approx(
        np.ceil(t.groupby(["layers", "cells", "position"])["loss"].std().max() * 100) / 100)
    cells = load_points(str(DATA / "new_cells"))
    fig = plot_heatmaps(cells, "mean")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "minGRU, l = 1" in titles and not any(x.startswith("MINGRU") for x in titles)
    png = save(fig, tmp_path, "cells")
    height, width = matplotlib.image.imread(png).shape[:2]
    assert width > height               # panels in a grid, not a column of 2 x archs


def test_a_figure_that_fails_to_render_leaves_the_old_file(tmp_path):
    fig = plot_limits_vs_units(load_points(str(DATA / "new_cells")))
    png = save(fig, tmp_path, "f")
    before = png.read_bytes()
    fig.axes[0].set_title(r"$\undefinedmacro$")       # mathtext fails at draw time
    with pytest.raises(ValueError):
        save(fig, tmp_path, "f")
    assert png.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png"]


def test_a_bad_budget_check_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="no points"):
        write_report(str(TUNED), tmp_path / "out", budget_check=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="not 2x the run's"):   # a check at the same budget
        write_report(str(TUNED), tmp_path / "out", budget_check=str(TUNED))
    assert not (tmp_path / "out").exists()
