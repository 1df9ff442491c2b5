"""The numbers the README and docs/REPRODUCTION.md state about the shipped data, computed from
docs/data/ with plain pandas (no memgrid code), and written into those pages between markers.

A page holds each generated block between two HTML comments::

    <!-- generated: NAME (python -m memgrid.headline) -->
    ...
    <!-- end generated: NAME -->

and :func:`blocks` renders every block from the Parquet tables. ``python -m memgrid.headline``
rewrites the blocks in place; ``tests/test_docs.py`` fails when a page's block differs from what
the data gives, so a stated number cannot drift from the data.

Definitions (one each, used everywhere on the pages):

- memorized: the MEAN evaluation loss (MAE) over seeds of a (configuration, p) is below 0.05;
- limit of a configuration (arch, l, c): the largest p such that every p' <= p is memorized
  (0 when p = 1 is not); `+` marks a limit censored by the grid: p = limit + 1 was not run;
- a seed's own limit: the same walk on that seed's loss alone; the table shows min..max;
- N: the units the points table records (c * l for the RNN, LSTM, GRU, minGRU and minLSTM;
  2c * l for the LRU), and the paper's bound N - (l - 1);
- converged: a shipped run of the same configuration at a larger budget (2x or 4x the steps)
  moves the limit, on the seeds both runs share, by no more than the spread of the seeds' own
  limits (max - min over the run's seeds): a move the seeds already disagree by is no finding
  (the rule of `memgrid analyze --budget-check`, computed here apart from it).
"""

from __future__ import annotations

import argparse
import functools
import math
import re
import sys
from pathlib import Path

import pandas as pd

from .analysis.tables import arch_label as label
from .cells import CELLS
from .config import THRESHOLD

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "docs" / "data"
PAGES = (ROOT / "README.md", ROOT / "docs" / "REPRODUCTION.md")
COMMAND = "python -m memgrid.headline"
BAND = (0.05, 0.2)
"""the closed band of in-between mean losses (the paper's bimodality)"""
KEYS = ["arch", "layers", "cells"]


CONVERGED = {"rnn": "fig6_rnn_tuned", "lstm": "fig8_lstm", "gru": "fig8_gru"}
"""the converged protocol's full grid per paper cell (the RNN's with its rate tuned per (l, c))"""
PAPER = {"rnn": "fig6_rnn-paper", "lstm": "fig8_lstm-paper", "gru": "fig8_gru-paper"}
"""the paper protocol's full grid per paper cell"""
NEW_CELLS = "new_cells"
MAMBA = "mamba_check"
"""the selective SSM in Mamba's block and bare (mamba, s6_bare)"""
LRU = "lru_check"
"""the LRU as its paper initialises it, on the long-range ring, and with real lambda"""
TODAY = "today_cells"
"""today's cells beside the paper's, each at the rate tuned per (arch, l, c), 5 seeds, p up to
2N or 30 (tune_configs/today_cells.yaml), run arch by arch"""
BUDGET_CHECKS = (("fig6_rnn_tuned", "fig6_tuned_budget_check-2x", "2x"),
                 ("fig6_rnn_tuned", "fig6_tuned_budget_check_wide-2x", "2x"),
                 ("budget_check", "budget_check-4x", "4x"),
                 (MAMBA, "mamba_budget_check-2x", "2x"),
                 (TODAY, "today_cells_budget_check-2x", "2x"),
                 (TODAY, "today_cells_lru_budget_check-2x", "2x"),
                 (TODAY, "today_cells_ssm_budget_check-2x", "2x"),
                 (TODAY, "today_cells_mamba_budget_check-2x", "2x"),
                 (TODAY, "today_cells_block_budget_check-2x", "2x"))
"""(run at the protocol's budget, the same configurations at a larger one, the factor)"""
HEADLINE = [("rnn", 1, 5), ("rnn", 1, 10), ("rnn", 1, 20), ("rnn", 2, 5),
            ("rnn", 2, 10), ("rnn", 3, 5), ("rnn", 5, 20),
            ("lstm", 1, 5), ("lstm", 1, 10), ("lstm", 3, 5), ("gru", 1, 5), ("gru", 1, 10),
            ("gru", 3, 5)]
"""the paper cells' configurations the README's headline shows (every one is on the
reproduction page's full tables)"""
NEW_HEADLINE = [(NEW_CELLS, "mingru", 1, 5), (NEW_CELLS, "mingru", 2, 5),
                (NEW_CELLS, "minlstm", 1, 5), (NEW_CELLS, "minlstm", 2, 5),
                (NEW_CELLS, "lru", 1, 5), (NEW_CELLS, "lru", 2, 5), (LRU, "lru_real", 1, 2),
                (LRU, "lru_real", 1, 4), (MAMBA, "mamba", 1, 2), (MAMBA, "mamba", 1, 4),
                (MAMBA, "s6_bare", 1, 4)]
"""the newer cells' configurations the headline shows, (docs/data folder, arch, l, c), for a
cell today_cells does not hold whole yet"""
TODAY_HEADLINE = [(2, 6)]
"""(l, c) the headline shows of each newer cell today_cells holds whole: one row each, so that
the README's first screen holds the table and a figure (the reproduction page has every size)"""


def points(name: str) -> pd.DataFrame:
    """The points table of docs/data/<name> (pyarrow): a copy of what this process read first
    (the shipped folders do not change while the pages are made)."""
    return _points(name).copy()


@functools.cache
def _points(name: str) -> pd.DataFrame:
    return pd.read_parquet(DATA / name / "points", engine="pyarrow")


def _walk(losses: dict[int, float]) -> tuple[int, bool]:
    """(limit, censored) of one {p: loss} mapping: p = 1, 2, ... while present and below the
    threshold (NaN fails); censored when the position after the limit was not run."""
    p = 1
    while p in losses and losses[p] < THRESHOLD:
        p += 1
    return p - 1, p not in losses


def limits(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (arch, layers, cells): units N, bound N - (l - 1), p_max, seeds, the limit of
    the mean over seeds and whether it is censored, and each seed's own limit (min, max) and
    how many seeds memorize every p <= the configuration's limit (`seeds_at_limit`)."""
    if df.empty:
        return pd.DataFrame()
    mean = df.groupby(KEYS + ["position"], sort=True)["loss"].mean()   # NaN skipped
    means: dict[tuple, dict[int, float]] = {}
    for (*key, p), v in zip(mean.index, mean.to_numpy(float)):
        means.setdefault(tuple(key), {})[int(p)] = v
    seeds: dict[tuple, dict[int, dict[int, float]]] = {}    # key -> seed -> {p: loss}
    first: dict[tuple, int] = {}                              # key -> its first row's units
    cols = [df[k].to_numpy() for k in KEYS]
    for *key, seed, p, loss, n in zip(*cols, df["seed"].to_numpy(), df["position"].to_numpy(),
                                      df["loss"].to_numpy(float), df["units"].to_numpy()):
        key = tuple(key)
        seeds.setdefault(key, {}).setdefault(int(seed), {})[int(p)] = loss
        first.setdefault(key, int(n))
    rows = []
    for key, mean_losses in means.items():
        limit, censored = _walk(mean_losses)
        own = [_walk(s)[0] for s in seeds[key].values()]
        n = first[key]
        rows.append(dict(zip(KEYS, key), units=n, bound=n - (int(key[1]) - 1),
                         p_max=max(mean_losses), seeds=len(seeds[key]),
                         limit=limit, censored=censored, seed_min=min(own), seed_max=max(own),
                         seeds_at_limit=sum(o >= limit for o in own)))
    return pd.DataFrame(rows)


def _fmt(limit: int, censored: bool) -> str:
    return f"{limit}+" if censored else str(limit)


def convergence(bases: set[str] | None = None) -> dict[tuple, str]:
    """(arch, layers, cells) -> e.g. `yes (2x, seeds 0..2)`, `yes (2x, seeds 0..2: 3 -> 2)` or
    `no (2x, seeds 0..2: 10 -> 13)`: the limit on the seeds that a run at the protocol's budget
    and a shipped run at a larger budget share, at the positions both ran, compared; yes where
    it moves by no more than the spread of the run's seeds' own limits (the module's definition
    of converged); every check of a configuration, joined by `; `. `bases`: only the checks of
    these runs."""
    out: dict[tuple, list[str]] = {}
    for base, check, factor in BUDGET_CHECKS:
        if bases is not None and base not in bases:
            continue
        more = points(check)
        seeds = sorted(set(more["seed"]))
        less = points(base)
        whole = limits(less).set_index(KEYS)
        spread = whole["seed_max"] - whole["seed_min"]
        ran = limits(more).set_index(KEYS)
        # paired: the seeds both hold, at the positions both ran
        less = less[less["seed"].isin(seeds)]
        both = less[KEYS + ["position"]].drop_duplicates().merge(
            more[KEYS + ["position"]].drop_duplicates())
        less, more = less.merge(both), more.merge(both)
        a, b = limits(less).set_index(KEYS), limits(more).set_index(KEYS)
        where = f"{factor}, seeds {seeds[0]}..{seeds[-1]}"
        for key in a.index.intersection(b.index):
            # where one ran positions the other did not, a limit that reaches its last
            # position is a lower bound: the move is known to be at least, or at most, so much
            cut = not a.loc[key, "p_max"] == whole.loc[key, "p_max"] == ran.loc[key, "p_max"]
            top_a = math.inf if cut and a.loc[key, "censored"] else int(a.loc[key, "limit"])
            top_b = math.inf if cut and b.loc[key, "censored"] else int(b.loc[key, "limit"])
            least, most = int(b.loc[key, "limit"]) - top_a, top_b - int(a.loc[key, "limit"])
            if least > spread[key] or most < -spread[key]:
                verdict = "no"
            elif -spread[key] <= least and most <= spread[key]:
                verdict = "yes"
            else:
                continue          # the check may move it by less or by more: no verdict
            la = _fmt(a.loc[key, "limit"], a.loc[key, "censored"])
            lb = _fmt(b.loc[key, "limit"], b.loc[key, "censored"])
            out.setdefault(tuple(key), []).append(
                f"yes ({where})" if la == lb else f"{verdict} ({where}: {la} -> {lb})")
    return {k: "; ".join(v) for k, v in out.items()}


def _cell(row: pd.Series | None) -> str:
    if row is None:
        return ""
    return (f"{_fmt(row['limit'], row['censored'])} ({row['seed_min']}..{row['seed_max']})"
            if row["seed_min"] != row["seed_max"] else
            f"{_fmt(row['limit'], row['censored'])} ({row['seed_min']})")


def headline() -> str:
    """The README's table: limit against N for the chosen configurations, both protocols."""
    conv = {a: limits(points(n)).set_index(KEYS) for a, n in CONVERGED.items()}
    pap = {a: limits(points(n)).set_index(KEYS) for a, n in PAPER.items()}
    new = {n: limits(points(n)).set_index(KEYS) for n in {f for f, *_ in NEW_HEADLINE}}
    marks = convergence()
    lines = ["| cell | l | c | N | N - (l - 1) | limit, converged protocol (seeds) | "
             "limit, paper protocol (seeds) | converged? |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for arch, l, c in HEADLINE:
        a = conv[arch].loc[(arch, l, c)]
        b = pap[arch].loc[(arch, l, c)]
        lines.append(f"| {label(arch)} | {l} | {c} | {a['units']} | {a['bound']} | {_cell(a)} | "
                     f"{_cell(b)} | {marks.get((arch, l, c), 'not checked')} |")
    today = today_archs()["done"]
    rows = [(TODAY, a, l, c) for a in today if a not in CONVERGED for l, c in TODAY_HEADLINE]
    rows += [r for r in NEW_HEADLINE if r[1] not in today]
    if today:
        new[TODAY] = limits(points(TODAY)).set_index(KEYS)
    own = {folder: convergence({folder}) for folder in new}          # each run's own checks
    for folder, arch, l, c in sorted(rows, key=lambda r: list(CELLS).index(r[1])):
        a = new[folder].loc[(arch, l, c)]
        lines.append(f"| {label(arch)} | {l} | {c} | {a['units']} | {a['bound']} | {_cell(a)} | "
                     f"| {own[folder].get((arch, l, c), 'not checked')} |")
    return "\n".join(lines)


def limit_grid(name: str) -> str:
    """Every configuration of docs/data/<name> as a table: a row per (arch, l), a column per c;
    each cell the limit (`+`: censored) and the seeds' own limits min..max."""
    lim = limits(points(name))
    cs = sorted(lim["cells"].unique())
    lines = ["| cell, l | " + " | ".join(f"c = {c}" for c in cs) + " |",
             "| --- |" + " --- |" * len(cs)]
    for (arch, l), g in lim.groupby(["arch", "layers"], sort=True):
        by_c = {int(r["cells"]): r for _, r in g.iterrows()}
        lines.append(f"| {label(arch)}, {l} | "
                     + " | ".join(_cell(by_c.get(int(c))) for c in cs) + " |")
    return "\n".join(lines)


def _grid_json(name: str) -> dict:
    import json

    return json.loads((DATA / name / "grid.json").read_text())


@functools.cache
def today_archs() -> dict[str, list[str]]:
    """The today_cells grid's cells by how much of them the shipped folder holds: `done`
    (every point its run trains), `part` (some) and `rest` (none yet), each in the arch axis's
    order; `want`, every cell's count of points its run trains (positions up to max_position N,
    or the axis's, less those its walk leaves out past settled limits: memgrid.walk), `have`,
    those stored, and `axes`, those of the axes (the walk's left out among them). Made once
    per process: do not change what it returns."""
    from .grid_file import grid_from_identity
    from .lr_tuning import grid_points
    from .walk import left_out

    folder = str(DATA / TODAY)
    grid = grid_from_identity(_grid_json(TODAY))
    stored = set(points(TODAY)["point_id"])
    every = grid_points(grid, folder, partial=True)
    left = {p.point_id for p in left_out(grid, folder, every)}
    archs = grid.axes["arch"]
    want, have, axes = dict.fromkeys(archs, 0), dict.fromkeys(archs, 0), dict.fromkeys(archs, 0)
    for p in every:
        axes[p.arch] += 1
        want[p.arch] += p.point_id not in left
        have[p.arch] += p.point_id in stored
    return {"done": [a for a in archs if 0 < have[a] == want[a]],
            "part": [a for a in archs if 0 < have[a] < want[a]],
            "rest": [a for a in archs if not have[a]],
            "want": want, "have": have, "axes": axes}


def today_status() -> str:
    """Which cells of the today_cells grid the shipped folder holds whole, which in part and
    which not yet (the run goes arch by arch and resumes from the shipped folder)."""
    t = today_archs()

    def names(archs: list[str]) -> str:
        return ", ".join(label(a) for a in archs)

    return (f"Measured: {names(t['done']) or 'none yet'} "
            f"({sum(t['want'][a] for a in t['done']):,} points)"
            + (f"; under way: {names(t['part'])} ({sum(t['have'][a] for a in t['part']):,} of "
               f"{sum(t['want'][a] for a in t['part']):,} points)" if t["part"] else "")
            + (f"; still to run: {names(t['rest'])}." if t["rest"] else "."))


def today_limits() -> str:
    """The limits of the cells today_cells holds whole: a row per (cell, l) with its N, a column
    per c; each entry the limit (`+`: censored at 2N or 30), the seeds' own limits, the rate
    its tuning chose, and a budget check's verdict where one ran (yes: the same limit at twice
    the budget on the seeds both hold; no: another)."""
    done = today_archs()["done"]
    df = points(TODAY)
    df = df[df["arch"].isin(done)]
    lim = limits(df).set_index(KEYS)
    rate = df.groupby(KEYS)["lr"].first()
    marks = convergence({TODAY})
    cs = sorted(df["cells"].unique())
    lines = ["| cell, l | N | " + " | ".join(f"c = {c}" for c in cs) + " |",
             "| --- | --- |" + " --- |" * len(cs)]
    for arch in done:
        for l in sorted(df.loc[df["arch"] == arch, "layers"].unique()):
            per = CELLS[arch].units(1) * int(l)
            entries = []
            for c in cs:
                key = (arch, int(l), int(c))
                mark = marks.get(key, "")
                entries.append(f"{_cell(lim.loc[key])}, lr {rate[key]:g}"
                               + (" ✓" if mark.startswith("yes") else
                                  " ✗" if mark.startswith("no") else ""))
            lines.append(f"| {label(arch)}, {l} | {per if per > 1 else ''}c | "
                         + " | ".join(entries) + " |")
    return "\n".join(lines)


def today_cost() -> str:
    """What each cell of today_cells cost: its points, the points its walk left out past
    settled limits (memgrid.walk; none for the cells trained whole), its tuning points and the
    CPU hours of their packs (each pack runs on one core; its time is its longest member's
    `wall_s`)."""
    rows = []
    for part in ("points", "tuning"):
        d = pd.read_parquet(DATA / TODAY / ("points" if part == "points" else "tuning/points"),
                            engine="pyarrow", columns=["arch", "pack_id", "wall_s"])
        rows.append(d.assign(part=part))
    d = pd.concat(rows)
    per_pack = d.groupby(["arch", "part", "pack_id"])["wall_s"].max().groupby(
        ["arch", "part"]).sum()
    n = d.groupby(["arch", "part"]).size()
    t = today_archs()
    lines = ["| cell | points | past the limit, left out | tuning points | CPU hours (tuning) |",
             "| --- | --- | --- | --- | --- |"]
    for arch in t["done"]:
        lines.append(f"| {label(arch)} | {n[(arch, 'points')]:,} | "
                     f"{t['axes'][arch] - t['want'][arch]:,} | {n.get((arch, 'tuning'), 0):,}"
                     f" | {(per_pack[(arch, 'points')] + per_pack.get((arch, 'tuning'), 0)) / 3600:.1f}"
                     f" ({per_pack.get((arch, 'tuning'), 0) / 3600:.1f}) |")
    return "\n".join(lines)


def bound_counts(name: str) -> dict[str, int]:
    """Against N - (l - 1), over the configurations whose limit the grid sees (not censored):
    how many sit above, on and below it, and how many of those above pass it at a position
    p <= 10 = q_min (bound < 10), before the task shifts its lengths."""
    lim = limits(points(name))
    seen = lim[~lim["censored"]]
    return dict(configs=len(lim), censored=int(lim["censored"].sum()), seen=len(seen),
                above=int((seen["limit"] > seen["bound"]).sum()),
                on=int((seen["limit"] == seen["bound"]).sum()),
                below=int((seen["limit"] < seen["bound"]).sum()),
                above_within_10=int(((seen["limit"] > seen["bound"])
                                     & (seen["bound"] < 10)).sum()))


def one_layer_p_equals_c(name: str) -> str:
    """Per c of the one-layer RNN: seeds with loss < 0.05 at p = c, out of all, and the limit."""
    df = points(name)
    df = df[(df["arch"] == "rnn") & (df["layers"] == 1)]
    lim = limits(df).set_index("cells")
    cs = sorted(df["cells"].unique())
    at = df[df["position"] == df["cells"]]
    ok = at.assign(m=at["loss"] < THRESHOLD).groupby("cells")["m"].agg(["sum", "size"])
    return "\n".join([
        "| c | " + " | ".join(map(str, cs)) + " |", "| --- |" + " --- |" * len(cs),
        "| seeds memorizing p = c | " + " | ".join(
            f"{int(ok.loc[c, 'sum'])}/{int(ok.loc[c, 'size'])}" for c in cs) + " |",
        "| limit | " + " | ".join(_fmt(lim.loc[c, "limit"], lim.loc[c, "censored"])
                                 for c in cs) + " |"])


def mean_loss_rows(names: dict[str, str]) -> str:
    """Mean loss over seeds per p for single-configuration grids (Figures 4 and 5)."""
    tables = {label: points(n).groupby("position")["loss"].mean() for label, n in names.items()}
    ps = sorted(set().union(*(t.index for t in tables.values())))
    lines = ["| p | " + " | ".join(map(str, ps)) + " |", "| --- |" + " --- |" * len(ps)]
    for label, t in tables.items():
        lines.append(f"| {label} | " + " | ".join(f"{t[p]:.3f}" for p in ps) + " |")
    return "\n".join(lines)


def solves_p10(names: dict[str, str]) -> str:
    """Figure 8's claim: configurations with mean loss < 0.05 at p = 10, and the lowest mean."""
    lines = ["| grid | configurations memorizing p = 10 | lowest mean loss at p = 10 |",
             "| --- | --- | --- |"]
    for label, n in names.items():
        df = points(n)
        m = df[df["position"] == 10].groupby(KEYS)["loss"].mean()
        lines.append(f"| {label} | {int((m < THRESHOLD).sum())} of {len(m)} | {m.min():.3f} |")
    return "\n".join(lines)


def fixed_vs_random(pairs: dict[str, tuple[str, str]]) -> str:
    """Figure 9's claim: of the (l, c, p) memorized at random length (Figure 6's points), how
    many are memorized at fixed length too, and how many fixed length adds."""
    lines = ["| protocol | memorized at random length | of them at fixed length | "
             "fixed length adds |", "| --- | --- | --- | --- |"]
    for label, (fixed, random) in pairs.items():
        f = points(fixed).groupby(KEYS + ["position"])["loss"].mean()
        r = points(random).groupby(KEYS + ["position"])["loss"].mean()
        r = r[r.index.isin(f.index)]
        fm, rm = set(f[f < THRESHOLD].index), set(r[r < THRESHOLD].index)
        lines.append(f"| {label} | {len(rm)} | {len(rm & fm)} | {len(fm - rm)} |")
    return "\n".join(lines)


def counting(names: dict[str, str]) -> str:
    """Figure 9's counting cases at fixed length: l = 1, c = 2, p = 10; l = 2, c = 2, p = 8..10."""
    cases = [(1, 2, 10), (2, 2, 8), (2, 2, 9), (2, 2, 10)]
    lines = ["| grid | " + " | ".join(f"l = {l}, c = {c}, p = {p}" for l, c, p in cases) + " |",
             "| --- |" + " --- |" * len(cases)]
    for label, n in names.items():
        df = points(n)
        cells = []
        for l, c, p in cases:
            g = df[(df["layers"] == l) & (df["cells"] == c) & (df["position"] == p)]
            cells.append(f"{g['loss'].mean():.3f} ({int((g['loss'] < THRESHOLD).sum())} of "
                         f"{len(g)} seeds)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bimodality(names: dict[str, str]) -> str:
    """Share of (configuration, p) means over seeds in the closed band [0.05, 0.2], per grid."""
    lines = ["| grid | (configuration, p) means | in [0.05, 0.2] | share |",
             "| --- | --- | --- | --- |"]
    for label, n in names.items():
        m = points(n).groupby(KEYS + ["position"])["loss"].mean()
        k = int(m.between(*BAND).sum())
        lines.append(f"| {label} | {len(m)} | {k} | {100 * k / len(m):.1f} % |")
    return "\n".join(lines)


def capacity(names: dict[str, str]) -> str:
    """Jaeger's bound on one network: stream MC above N, and the largest share of N."""
    lines = ["| grid | networks with a stream MC | above N | largest MC / N |",
             "| --- | --- | --- | --- |"]
    for label, n in names.items():
        df = points(n).dropna(subset=["mc_stream"])
        share = df["mc_stream"] / df["units"]
        lines.append(f"| {label} | {len(df)} | {int((share > 1).sum())} | {share.max():.2f} |")
    return "\n".join(lines)


def bound_table(names: dict[str, str]) -> str:
    lines = ["| grid | configurations | limit censored | seen: above N - (l - 1) | on it | "
             "below it | above it, passing it at p <= 10 |", "| --- |" + " --- |" * 6]
    for label, n in names.items():
        b = bound_counts(n)
        lines.append(f"| {label} | {b['configs']} | {b['censored']} | {b['above']} | {b['on']} "
                     f"| {b['below']} | {b['above_within_10']} |")
    return "\n".join(lines)


def blocks() -> dict[str, str]:
    """Every generated block by name."""
    fig6 = {"Figure 6, converged (rate tuned)": "fig6_rnn_tuned",
            "Figure 6, paper": "fig6_rnn-paper"}
    fig8 = {"Figure 8 LSTM, converged": "fig8_lstm", "Figure 8 LSTM, paper": "fig8_lstm-paper",
            "Figure 8 GRU, converged": "fig8_gru", "Figure 8 GRU, paper": "fig8_gru-paper"}
    return {
        "headline": headline(),
        "fig4": mean_loss_rows({"mean loss, paper": "fig4_rnn-paper",
                                "mean loss, converged": "fig4_rnn"}),
        "fig5": mean_loss_rows({"mean loss, paper": "fig5_lstm-paper",
                                "mean loss, converged": "fig5_lstm"}),
        "p_equals_c_converged": one_layer_p_equals_c("fig6_rnn_tuned"),
        "p_equals_c_paper": one_layer_p_equals_c("fig6_rnn-paper"),
        "limits_fig6_converged": limit_grid("fig6_rnn_tuned"),
        "limits_fig6_paper": limit_grid("fig6_rnn-paper"),
        "limits_fig8_converged": limit_grid("fig8_lstm") + "\n" + limit_grid("fig8_gru")
        .split("\n", 2)[2],
        "limits_fig8_paper": limit_grid("fig8_lstm-paper") + "\n" + limit_grid("fig8_gru-paper")
        .split("\n", 2)[2],
        "limits_new_cells": limit_grid(NEW_CELLS),
        "today_status": today_status(),
        "today_limits": today_limits(),
        "today_cost": today_cost(),
        "limits_mamba": limit_grid(MAMBA),
        "limits_lru": limit_grid(LRU),
        "bound": bound_table({**fig6, **fig8, "newer cells, converged": NEW_CELLS}),
        "p10": solves_p10(fig8),
        "fixed_vs_random": fixed_vs_random({
            "paper": ("fig9_rnn_fixed-paper", "fig6_rnn-paper"),
            "converged (random length: rate tuned)": ("fig9_rnn_fixed", "fig6_rnn_tuned")}),
        "counting": counting({"Figure 9 fixed length, paper": "fig9_rnn_fixed-paper",
                              "Figure 9 fixed length, converged": "fig9_rnn_fixed"}),
        "bimodality": bimodality({"Figure 6 slice, paper": "fig6_slice-paper",
                                  "Figure 6 slice, converged": "fig6_slice", **fig6, **fig8,
                                  "Figure 9 fixed length, paper": "fig9_rnn_fixed-paper",
                                  "Figure 9 fixed length, converged": "fig9_rnn_fixed"}),
        "capacity": capacity({**fig6, **fig8, "Figure 9 fixed length, converged":
                              "fig9_rnn_fixed", "newer cells, converged": NEW_CELLS}),
    }


_BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) \(python -m memgrid\.headline\) -->\n)"
                    r"(?P<body>.*?)(<!-- end generated: (?P=name) -->)", re.S)


def page_blocks(text: str) -> dict[str, str]:
    """The generated blocks a page holds, by name (their bodies as written)."""
    return {m["name"]: m["body"].removesuffix("\n") for m in _BLOCK.finditer(text)}


def fill(text: str, rendered: dict[str, str]) -> str:
    """`text` with every generated block's body replaced by its rendering."""
    def sub(m: re.Match) -> str:
        if m["name"] not in rendered:
            raise KeyError(f"no generated block named {m['name']!r}")
        return m.group(1) + rendered[m["name"]] + "\n" + m.group(4)
    return _BLOCK.sub(sub, text)


FIGURE = ROOT / "docs" / "figures" / "today_cells_limits.png"


def today_figure() -> Path:
    """The reproduction page's figure of today's cells (memgrid.analysis.plots'
    plot_limit_per_cell, with the budget check's marks), drawn on the cells today_cells holds
    whole: a cell under way would show the positions it has reached, not its limit."""
    from .analysis.convergence import budget_check, check_marks
    from .analysis.limits import limits_with_seeds
    from .analysis.plots import plot_limit_per_cell, save

    df = points(TODAY)
    df = df[df["arch"].isin(today_archs()["done"])]
    check = budget_check(df, pd.concat([points(c) for b, c, _ in BUDGET_CHECKS if b == TODAY]))
    lim = limits_with_seeds(df).reset_index(drop=True)
    marks = dict(zip(lim[KEYS].itertuples(index=False, name=None), check_marks(lim, check)))
    png = save(plot_limit_per_cell(df, converged=marks), FIGURE.parent, FIGURE.stem)
    png.with_suffix(".pdf").unlink()       # the page shows the PNG; the report keeps both
    return png


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=COMMAND, description="Rewrite the generated tables of "
                                 "README.md and docs/REPRODUCTION.md, and the figure of "
                                 "today's cells, from docs/data/.")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")
    args = ap.parse_args(argv)
    rendered = blocks()
    stale = 0
    for page in PAGES:
        text = page.read_text()
        new = fill(text, rendered)
        if new != text:
            stale += 1
            if not args.check:
                page.write_text(new)
        print(f"{page.relative_to(ROOT)}: {len(page_blocks(text))} blocks, "
              f"{'stale' if new != text and args.check else 'written' if new != text else 'up to date'}")
    if not args.check:
        print(f"{today_figure().relative_to(ROOT)}: drawn")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
