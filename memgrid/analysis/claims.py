"""The paper's findings, checked against a points table.

Each check returns a verdict computed from the data -- `holds`, `does not hold`, `undecided`
when a comparison's counts are what a coin flip would give, or `not covered by this grid` when
the table lacks the points the claim is about -- and an evidence string with the numbers behind
it. Claims 1-6 and 9 are about the random memorization task (Definition 1),
so they read only random-length points; claim 7 compares fixed with random length, claim 8 reads
fixed length (Definition 2).

Where the table varies other settings (an lr axis, say), a claim about one configuration (1, 3,
5, 8) holds when one setting shows it, and a claim about all configurations (4, 6, 9) must hold
for every setting; claims 2 and 7 pool the seeds and settings of each matched cell. A claim that
something is, or is not, learned also depends on the training budget (:func:`check_claims`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..config import PROTOCOLS
from .capacity import capacity_testable, memory_capacity
from .limits import bimodality
from .tables import (THRESHOLD, budget_steps, describe, fixed_length, mean_losses, random_length,
                     values_text, variant_columns)

HOLDS, FAILS, NOT_COVERED = "holds", "does not hold", "not covered by this grid"
UNDECIDED = "undecided"
"""A comparison whose counts a fair coin would give as often (:func:`sign_test`)."""
COIN = 0.05
"""Two-sided sign-test p-value at or above which a comparison is `undecided`."""
FEW = 0.2
"""Claim 7 holds when less than this share of (configuration, p) means lies in [0.05, 0.2]."""
PAPER_STEPS = PROTOCOLS["paper"]["steps_per_epoch"] * PROTOCOLS["paper"]["max_epochs"]
"""The paper trains "for up to 5000 epochs"; memgrid's `paper` protocol reads an epoch as one
SGD step. A table whose largest budget (steps_per_epoch x max_epochs) is smaller cannot refute
a claim that something is learned, nor confirm one that something is not."""


def _fmt(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.3f}"


def _per_setting(sel: pd.DataFrame, positions: range, judge, need: str) -> tuple[str, str]:
    """A claim about one configuration (`sel`: its mean losses), judged for each setting of the
    table's other variant columns: it holds when one setting shows it. `judge(m)` takes
    {p: mean loss} and returns (what fails, the numbers); `need` says what a table without every
    p of `positions` lacks."""
    extra = [k for k in variant_columns(sel) if k not in ("arch", "layers", "cells")]
    found = []
    for _, g in (sel.groupby(extra, dropna=False) if extra else [((), sel)]):
        m = dict(zip(g["position"].astype(int), g["mean"]))
        if not set(positions) <= set(m):
            continue
        bad, text = judge(m)
        found.append((not bad, f"{describe(g.iloc[0], extra)} {text}"
                      + (f"; {'; '.join(bad)}" if bad else "")))
    if not found:
        return NOT_COVERED, need
    ok = [ev for good, ev in found if good]
    return (HOLDS, ok[0]) if ok else (FAILS, " | ".join(ev for _, ev in found))


def _config(means: pd.DataFrame, arch: str, layers: int, cells: int) -> pd.DataFrame:
    return means[(means["arch"] == arch) & (means["layers"] == layers) & (means["cells"] == cells)]


def _fig4(means: pd.DataFrame, threshold: float) -> tuple[str, str]:
    """RNN l=1 c=5: p <= 5 below threshold, 6..8 in [threshold, 0.2), 9 and 10 >= 0.2."""
    def judge(m):
        bad = [f"p={p}: {_fmt(m[p])} not < {threshold}" for p in range(1, 6) if not m[p] < threshold]
        bad += [f"p={p}: {_fmt(m[p])} not in [{threshold}, 0.2)" for p in range(6, 9)
                if not threshold <= m[p] < 0.2]
        bad += [f"p={p}: {_fmt(m[p])} not >= 0.2" for p in (9, 10) if not m[p] >= 0.2]
        return bad, "mean loss by p: " + " ".join(f"{p}:{_fmt(m[p])}" for p in range(1, 11))
    return _per_setting(_config(means, "rnn", 1, 5), range(1, 11), judge,
                        "needs rnn l=1 c=5 at every p = 1..10 (random length)")


def _epochs_to_threshold(points: pd.DataFrame, curves: pd.DataFrame | None,
                         threshold: float) -> pd.Series:
    """Epochs until the evaluation loss first fell below `threshold`: from the curve if there is
    one, else the point's `epochs` if its final loss is below. Points that never got there count
    as their max_epochs (the budget), so that a slower learner can only look slower."""
    budget = points["max_epochs"] if "max_epochs" in points else points["epochs"].max()
    t = pd.Series(np.where(points["loss"] < threshold, points["epochs"], budget),
                  index=points.index, dtype=float)
    if curves is not None and len(curves) and "point_id" in points:
        hit = curves[curves["eval_loss"] < threshold].groupby("point_id")["epoch"].min()
        first = points["point_id"].map(hit)
        t = first.where(first.notna(), t)
    return t


def sign_test(wins: int, losses: int) -> float:
    """Two-sided sign test: the probability that a fair coin tossed ``wins + losses`` times
    gives a split at least as uneven (ties left out before). 1.0 for no tosses."""
    n, k = wins + losses, max(wins, losses)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _lstm_slower(points: pd.DataFrame, curves: pd.DataFrame | None,
                 threshold: float) -> tuple[str, str]:
    """Per (l, c, p) where RNN and LSTM both ran and one of them reached the threshold: is the
    LSTM's mean epochs-to-threshold over seeds larger? Holds if it is larger in more cells than
    it is smaller (ties, e.g. both solved by the first evaluation, tell nothing)."""
    pts = points[points["arch"].isin(["rnn", "lstm"])]
    if "epochs" not in pts or pts.empty:
        return NOT_COVERED, "needs rnn and lstm points with epochs"
    pts = pts.assign(t=_epochs_to_threshold(pts, curves, threshold),
                     reached=pts["loss"] < threshold)
    cell = pts.groupby(["layers", "cells", "position", "arch"]).agg(
        t=("t", "mean"), reached=("reached", "any")).unstack("arch")
    if ("t", "rnn") not in cell or ("t", "lstm") not in cell:
        return NOT_COVERED, "needs rnn and lstm at the same (l, c, p)"
    cell = cell.dropna(subset=[("t", "rnn"), ("t", "lstm")])
    cell = cell[cell[("reached", "rnn")].astype(bool) | cell[("reached", "lstm")].astype(bool)]
    if cell.empty:
        return NOT_COVERED, f"no (l, c, p) run by both where either reached loss < {threshold}"
    rnn, lstm = cell[("t", "rnn")], cell[("t", "lstm")]
    slower, faster = int((lstm > rnn).sum()), int((lstm < rnn).sum())
    source = "curves" if curves is not None and len(curves) else "final losses and epochs"
    ev = (f"LSTM slower in {slower}, faster in {faster}, tied in {len(cell) - slower - faster} of "
          f"{len(cell)} (l, c, p) where either reached loss < {threshold}; median epochs to get "
          f"there: rnn {rnn.median():.0f}, lstm {lstm.median():.0f} (from {source}; "
          "never reached = max_epochs)")
    p = sign_test(slower, faster)
    ev += f"; sign test p = {p:.2f}"
    if p >= COIN:
        return UNDECIDED, ev + f" (>= {COIN}: a coin flip gives such a split)"
    return (HOLDS if slower > faster else FAILS), ev


def _gated_p10(means: pd.DataFrame) -> tuple[str, str]:
    """No LSTM/GRU configuration has mean loss < 0.04 at p = 10 (paper, Figure 8)."""
    sel = means[means["arch"].isin(["lstm", "gru"]) & (means["position"] == 10)]
    if sel.empty:
        return NOT_COVERED, "needs lstm or gru points at p = 10 (random length)"
    solved = sel[sel["mean"] < 0.04]  # a NaN mean (a diverged seed) did not solve it
    best = sel.loc[sel["mean"].idxmin()] if sel["mean"].notna().any() else sel.iloc[0]
    ev = (f"{len(solved)} of {len(sel)} lstm/gru configurations at p = 10 have mean loss < 0.04; "
          f"lowest: {describe(best)} {_fmt(best['mean'])}")
    return (HOLDS if solved.empty else FAILS), ev


def _c_equals_p(points: pd.DataFrame, threshold: float) -> tuple[str, str]:
    """Every one-layer RNN with c cells memorizes p = c (Figure 6: "can always memorize"):
    every seed's loss below threshold, not only the mean (a seed that fails counts). Where the
    table varies other settings, a cell count holds the claim if one setting does for all its
    seeds."""
    sel = points[(points["arch"] == "rnn") & (points["layers"] == 1)
                 & (points["position"] == points["cells"])]
    if sel.empty:
        return NOT_COVERED, "needs one-layer rnn points with p = c (random length)"
    extra = [k for k in variant_columns(sel) if k not in ("arch", "layers", "cells", "position")]
    ok = sel.assign(ok=sel["loss"].astype(float) < threshold)   # NaN (diverged) fails
    per = ok.groupby(["cells"] + extra, dropna=False)["ok"].agg(["sum", "size"]).reset_index()
    best = per.assign(frac=per["sum"] / per["size"]).sort_values("frac").groupby("cells").last()
    bad = best[best["sum"] < best["size"]]
    ev = (f"{len(best) - len(bad)} of {len(best)} cell counts c = {values_text(best.index)} memorize "
          f"p = c in every seed (loss < {threshold})")
    if bad.size:
        ev += "; not: " + ", ".join(f"c={c}: {int(r['sum'])} of {int(r['size'])} seeds"
                                    for c, r in bad.iterrows())
    if extra:
        ev += f" (best over {', '.join(extra)})"
    return (HOLDS if bad.empty else FAILS), ev


def _lstm_p5(means: pd.DataFrame, threshold: float) -> tuple[str, str]:
    """LSTM l=1 c=5 learns every p <= 5 eventually (Figure 5: "all learned eventually")."""
    def judge(m):
        bad = [f"p={p}: {_fmt(m[p])} not < {threshold}" for p in range(1, 6) if not m[p] < threshold]
        return bad, "mean loss p=1..5: " + " ".join(_fmt(m[p]) for p in range(1, 6))
    return _per_setting(_config(means, "lstm", 1, 5), range(1, 6), judge,
                        "needs lstm l=1 c=5 at every p = 1..5 (random length)")


def _mc_bound(points: pd.DataFrame) -> tuple[str, str]:
    """MC <= N - (l - 1) for every (arch, l, c, seed) (section 4)."""
    if "r2" not in points or points["r2"].isna().all():
        return NOT_COVERED, "needs r2 measurements"
    mc = memory_capacity(points)
    testable = capacity_testable(mc)
    if not testable.any():
        return NOT_COVERED, ("every network has no more positions than N - (l - 1): "
                             "the sum of r2 cannot exceed the bound")
    over = mc[mc["margin"] > 0]
    worst = mc.loc[mc["margin"].idxmax()]
    ev = (f"{len(over)} of {len(mc)} networks have MC > N - (l - 1) ({int(testable.sum())} could "
          f"exceed it); largest margin {worst['margin']:+.3f} ({describe(worst)} seed "
          f"{int(worst['seed'])}: MC {worst['mc']:.3f}, bound {int(worst['bound'])}")
    if np.isfinite(worst["noise"]):
        ev += f", chance level of the sum {worst['noise']:.3f}"
    return (HOLDS if over.empty else FAILS), ev + ")"


def _fixed_vs_random(points: pd.DataFrame, threshold: float) -> tuple[str, str]:
    """Whatever random length memorizes (mean < threshold), fixed length does too (Figure 9)."""
    keys = ["arch", "layers", "cells"]
    fixed = mean_losses(fixed_length(points), keys)
    rand = mean_losses(random_length(points), keys)
    both = rand.merge(fixed, on=keys + ["position"], suffixes=("_random", "_fixed"))
    if both.empty:
        return NOT_COVERED, "needs fixed-length and random-length points of the same (arch, l, c, p)"
    r_ok, f_ok = both["mean_random"] < threshold, both["mean_fixed"] < threshold
    lost, extra = both[r_ok & ~f_ok], both[f_ok & ~r_ok]
    ev = (f"{int(r_ok.sum())} of {len(both)} matched (arch, l, c, p) memorized at random length, "
          f"{int((r_ok & f_ok).sum())} of them at fixed length too; fixed length adds "
          f"{len(extra)}")
    if len(extra):
        ev += " (" + ", ".join(f"{describe(r)} p={int(r['position'])}" for _, r in extra.head(5).iterrows()) + ")"
    if len(lost):
        ev += "; lost at fixed length: " + ", ".join(
            f"{describe(r)} p={int(r['position'])}" for _, r in lost.head(5).iterrows())
    return (HOLDS if lost.empty else FAILS), ev


COUNTING = ((1, 2, (10,)), (2, 2, (8, 9, 10)))
"""Figure 9's "further learnable instances": (l, c, positions) of an RNN at fixed length q = 10
that the paper saw learned by counting from the start."""


def _counting(points: pd.DataFrame, threshold: float) -> tuple[str, str]:
    """At fixed length, the paper's counting cases are memorized (mean loss < threshold): p = 10
    for l=1 c=2, p >= 8 for l=2 c=2. The evidence also counts the seeds that get there."""
    fixed = fixed_length(points)
    fixed = fixed[(fixed["arch"] == "rnn") & (fixed["q_max"] == 10)] if "q_max" in fixed else fixed
    extra = [k for k in variant_columns(fixed) if k not in ("layers", "cells", "position")]
    found, covered = [], True
    for _, g in (fixed.groupby(extra, dropna=False) if extra else [((), fixed)]):
        parts, ok = [], True
        for l, c, ps in COUNTING:
            for p in ps:
                sel = g[(g["layers"] == l) & (g["cells"] == c) & (g["position"] == p)]
                if sel.empty:
                    covered = False
                    continue
                loss = sel["loss"].astype(float)
                mean = loss.mean() if loss.notna().all() else np.nan
                ok &= bool(mean < threshold)
                parts.append(f"l={l} c={c} p={p}: {_fmt(mean)} ({int((loss < threshold).sum())} "
                             f"of {len(loss)} seeds < {threshold})")
        if parts and covered:
            label = describe(g.iloc[0], extra) + " " if extra else ""
            found.append((ok, label + "; ".join(parts)))
    if not found:
        return NOT_COVERED, "needs fixed-length (q = 10) rnn l=1 c=2 p=10 and l=2 c=2 p=8..10"
    good = [ev for ok, ev in found if ok]
    return (HOLDS, good[0]) if good else (FAILS, " | ".join(ev for _, ev in found))


def _bimodal(points: pd.DataFrame, threshold: float) -> tuple[str, str]:
    """Few (configuration, p) means in [threshold, 0.2] (Figures 6, 7)."""
    n_configs = len(points.groupby(["arch", "layers", "cells"]))
    if n_configs < 2:
        return NOT_COVERED, "needs a heatmap: at least two (arch, l, c) configurations"
    b = bimodality(points, threshold, 0.2)
    ev = (f"{b['means_between']} of {b['means']} (arch, l, c, p) means "
          f"({100 * b['share_means']:.1f}%) and {100 * b['share_points']:.1f}% of single points "
          f"lie in [{threshold}, 0.2]; 'few' means < {100 * FEW:.0f}%")
    return (HOLDS if b["share_means"] < FEW else FAILS), ev


def check_claims(points: pd.DataFrame, curves: pd.DataFrame | None = None,
                 threshold: float = THRESHOLD) -> pd.DataFrame:
    """The paper's nine claims against `points` (and `curves`, for claim 2, if given).

    Returns one row per claim: `claim`, `figure`, `verdict` (holds / does not hold /
    undecided / not covered by this grid) and `evidence` (the numbers the verdict came from).

    The verdicts take the table's training budget into account: below the paper's
    :data:`PAPER_STEPS`, a claim that something is learned cannot fail and one that something
    is not learned cannot hold (either would be about the short budget); such verdicts become
    `not covered by this grid`, with the budget in the evidence.
    """
    rand = random_length(points)
    means = mean_losses(rand)
    # (claim, figure, what a short budget cannot decide, check); "learned" claims cannot fail,
    # "not learned" ones cannot hold, "both" neither, None: a comparison, any budget
    checks = [
        ("RNN l=1 c=5: p<=5 learned, p=6..8 in between, p=9,10 at the 0.25 plateau", "Fig. 4",
         "both", lambda: _fig4(means, threshold)),
        ("LSTM learns slower than an RNN of the same size", "Fig. 5", None,
         lambda: _lstm_slower(rand, curves, threshold)),
        ("LSTM l=1 c=5 learns every p <= 5 eventually", "Fig. 5, p <= 5", "learned",
         lambda: _lstm_p5(means, threshold)),
        ("no LSTM/GRU configuration solves p = 10 (mean loss >= 0.04)", "Fig. 8", "not learned",
         lambda: _gated_p10(means)),
        ("a one-layer RNN with c = n cells memorizes p = n (every seed)", "Fig. 6", "learned",
         lambda: _c_equals_p(rand, threshold)),
        ("memory capacity MC <= N - (l - 1) for every network", "Sec. 4", "not learned",
         lambda: _mc_bound(rand)),
        ("fixed length learns at least what random length learns", "Fig. 9", None,
         lambda: _fixed_vs_random(points, threshold)),
        ("fixed length q = 10 adds counting cases: p = 10 at l=1 c=2, p >= 8 at l=2 c=2",
         "Fig. 9, counting", "learned", lambda: _counting(points, threshold)),
        (f"few (arch, l, c, p) mean losses in [{threshold}, 0.2] (bimodal outcomes)", "Figs. 6, 7",
         None, lambda: _bimodal(rand, threshold)),
    ]
    budget = _largest_budget(points)
    rows = []
    for claim, figure, direction, check in checks:
        verdict, evidence = check() if len(points) else (NOT_COVERED, "no points")
        short = budget is not None and budget < PAPER_STEPS
        if short and ((verdict == FAILS and direction in ("learned", "both"))
                      or (verdict == HOLDS and direction in ("not learned", "both"))):
            evidence = (f"would be '{verdict}', but this table trained at most {budget:,} SGD "
                        f"steps, fewer than the paper's {PAPER_STEPS:,} epochs: more training "
                        f"could change it ({evidence})")
            verdict = NOT_COVERED
        rows.append({"claim": claim, "figure": figure, "verdict": verdict, "evidence": evidence})
    return pd.DataFrame(rows, columns=["claim", "figure", "verdict", "evidence"])


def _largest_budget(points: pd.DataFrame) -> int | None:
    """Largest budget (training steps) of the trained points (None: not in the table)."""
    trained = points[points["arch"] != "esn"] if "arch" in points else points
    if trained.empty or "max_epochs" not in trained:
        return None
    return int(budget_steps(trained).max())
