"""The pages against the code and the shipped data: docs/reference.md is what the code's
docstrings and click options give, every generated table of README.md and docs/REPRODUCTION.md
is what docs/data/ gives, the README's stated numbers hold on the data, and no page cites a file
the repository lacks. Fast: reads Parquet, trains nothing."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from memgrid import headline, reference
from memgrid.cells import BLOCK_CONV, MAMBA_CONV

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
REPRO = ROOT / "docs" / "REPRODUCTION.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "docs" / "data" / "README.md",
         ROOT / "benchmarks" / "README.md"]
REGENERATE = ("regenerate with `python -m memgrid.headline` (the tables from docs/data/) and "
              "`python -m memgrid.reference` (docs/reference.md from the code), then review "
              "the diff")


def test_reference_is_generated_from_the_code():
    assert reference.PAGE.read_text() == reference.render(), (
        f"docs/reference.md differs from memgrid/config.py or memgrid/cli.py: "
        f"{REGENERATE}")


def test_reference_names_every_setting_and_flag():
    from memgrid import config
    from memgrid.cli import main
    text = reference.PAGE.read_text()
    for key in [*config.REQUIRED_AXES, *(k for ks in config.SECTIONS.values() for k in ks)]:
        assert f"| `{key}` |" in text, key
    for cmd in main.commands.values():
        for p in cmd.params:
            if hasattr(p, "opts") and p.param_type_name == "option":
                assert f"`{', '.join(p.opts)}`" in text, p.opts


def test_field_docs_reads_the_string_under_each_field():
    from memgrid.config import Point
    docs = reference.field_docs(Point)
    assert docs["cells"].startswith("c: units per layer")
    assert set(docs) >= {"arch", "layers", "cells", "position", "seed", "lr", "mc_length"}


@pytest.mark.parametrize("page", [README, REPRO], ids=lambda p: p.name)
def test_generated_tables_match_the_data(page):
    rendered = headline.blocks()
    written = headline.page_blocks(page.read_text())
    assert written, f"{page.name} holds no generated table"
    for name, body in written.items():
        assert body == rendered[name], f"{page.name}: table {name!r} differs from docs/data/: " \
            + REGENERATE


def _limits_independently(points: pd.DataFrame) -> dict[tuple, tuple[int, bool, int, int]]:
    """(arch, layers, cells) -> (limit, censored, seed min, seed max), by another route than
    memgrid.headline: a pivot of positions, a cumulative product of the memorized marks."""
    out = {}
    mean = points.pivot_table(index=["arch", "layers", "cells"], columns="position",
                              values="loss", aggfunc="mean", dropna=False)
    for key, row in mean.iterrows():
        ps = row.dropna().index
        if ps.empty:        # a combination of arch, l and c the grid does not hold (yet)
            continue
        full = np.arange(1, int(ps.max()) + 2)
        ok = np.array([p in ps and row[p] < 0.05 for p in full])
        limit = int(np.cumprod(ok).sum())
        g = points[(points["arch"] == key[0]) & (points["layers"] == key[1])
                   & (points["cells"] == key[2])]
        per = g.pivot_table(index="seed", columns="position", values="loss")
        own = [int(np.cumprod([p in per.columns and s[p] < 0.05 for p in full]).sum())
               for _, s in per.iterrows()]
        out[key] = (limit, limit + 1 not in ps, min(own), max(own))
    return out


@pytest.mark.parametrize("name", ["fig6_rnn_tuned", "fig6_rnn-paper", "fig8_lstm",
                                  "fig8_gru-paper", "new_cells", "mamba_check",
                                  "mamba_budget_check-2x", "lru_check", "today_cells",
                                  "today_cells_budget_check-2x", "today_cells_ssm_budget_check-2x",
                                  "today_cells_mamba_budget_check-2x"])
def test_limits_recomputed_another_way(name):
    pts = pd.read_parquet(headline.DATA / name / "points")
    want = _limits_independently(pts)
    got = headline.limits(headline.points(name)).set_index(headline.KEYS)
    assert len(got) == len(want)
    for key, (limit, censored, lo, hi) in want.items():
        row = got.loc[key]
        assert (row["limit"], row["censored"], row["seed_min"], row["seed_max"]) == \
            (limit, censored, lo, hi), (name, key)


@pytest.mark.parametrize("base, check, factor", headline.BUDGET_CHECKS,
                         ids=[c for _, c, _ in headline.BUDGET_CHECKS])
def test_converged_means_what_the_report_says(base, check, factor):
    """The pages' converged marks (memgrid.headline, plain pandas) and `memgrid analyze
    --budget-check`'s (memgrid.analysis), two routes to one definition, check the same
    configurations and agree on each."""
    from memgrid.analysis.summary import limits_table

    marks = headline.convergence({base})
    run = pd.read_parquet(headline.DATA / base / "points")
    more = pd.read_parquet(headline.DATA / check / "points")
    table = limits_table(run, check=more)
    table = table[(table["task"] == "random") & (table["converged"] != "unchecked")]
    assert len(table)
    mine = {key: [m for m in marks.get(key, "").split("; ")
                  if m.startswith(("yes", "no")) and f"({factor}, " in m]
            for key in more[headline.KEYS].drop_duplicates().itertuples(index=False, name=None)}
    assert {k for k, v in mine.items() if v} == \
        set(table[headline.KEYS].itertuples(index=False, name=None))
    for row in table.itertuples():
        got = mine[(row.arch, row.layers, row.cells)]
        assert all(m.startswith("yes") == (row.converged == "converged") for m in got), \
            (row.arch, row.layers, row.cells, row.converged, got)


def _limit(name, arch, l, c):
    return headline.limits(headline.points(name)).set_index(headline.KEYS).loc[(arch, l, c)]


def _two_channels_give_a_sign() -> bool:
    """A LayerNorm over two channels (the LRU's block's, memgrid.cells) gives +-(1, -1)
    before its gain and bias wherever the two differ by more than a few hundredths."""
    from memgrid.cells import _layer_norm

    u = torch.randn(1, 2, 10_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    apart = (u[0, 0] - u[0, 1]).abs() > 0.02
    y = _layer_norm(u, torch.ones(1, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64))
    return bool(apart.sum() > 9_000 and torch.allclose(y[0, 0], -y[0, 1])
                and torch.allclose(y[0, 0, apart].abs(), torch.ones(int(apart.sum()),
                                                                    dtype=torch.float64), atol=0.05))


def test_readme_statements_hold_on_the_data():
    text = " ".join(README.read_text().split())
    tuned = headline.points("fig6_rnn_tuned")
    one = tuned[(tuned["layers"] == 1) & (tuned["position"] == tuned["cells"])]
    every_seed = one.groupby("cells")["loss"].apply(lambda s: bool((s < 0.05).all()))
    assert "memorizes p = c in every seed for c = 1..10" in text
    assert every_seed.loc[1:10].all() and not every_seed.loc[11:].all()
    assert "its limit is exactly N = c for c = 1..7" in text
    assert [int(_limit("fig6_rnn_tuned", "rnn", 1, c)["limit"]) for c in range(1, 9)] == \
        [1, 2, 3, 4, 5, 6, 7, 10]
    b = headline.bound_counts("fig6_rnn_tuned")
    assert "Of the tuned Figure 6 grid's 17 limits above N - (l - 1), 14 pass it only there" in text
    assert (b["above"], b["above"] - b["above_within_10"]) == (17, 14)
    paper = pd.concat([headline.limits(headline.points(n)) for n in ("fig8_lstm-paper",
                                                                     "fig8_gru-paper")])
    assert "hold 0-3 positions at the paper's budget whatever their size" in text
    assert (paper["limit"].min(), paper["limit"].max()) == (0, 3)
    gru, lstm = headline.bound_counts("fig8_gru"), headline.bound_counts("fig8_lstm")
    assert "on N - (l - 1) in 14 of the 16 configurations" in text
    assert (gru["on"], gru["seen"]) == (14, 16)
    assert "the LSTM's is on or above it in all 15" in text
    assert (lstm["seen"], lstm["below"]) == (15, 0)
    new = headline.limits(headline.points("new_cells")).set_index("arch")
    today = headline.limits(headline.points("today_cells")).set_index("arch")
    assert "**minGRU and minLSTM** remember 1 or 2 positions at every size from N = 2 to 20" \
        in text
    for arch in ("mingru", "minlstm"):
        assert set(today.loc[arch, "limit"]) == {1, 2}
        assert (today.loc[arch, "units"].min(), today.loc[arch, "units"].max()) == (2, 20)
    assert "each at its best of 7 learning rates, in 5 seeds" in text
    grid = headline._grid_json("today_cells")
    assert len(grid["tune_lr"]["candidates"]) == 7 and len(grid["axes"]["seed"]) == 5
    assert "twice the budget leaves every limit within its seeds' range" in text   # checked
    assert ("in their **published block** (minLM's, around a causal convolution of width 3) "
            "they hold 4 or 5 positions with one layer and 6 to 8 with two, from N = 6 to 60: one "
            "to three more than the convolutions reach") in text
    blocks = today.loc[["mingru_block", "minlstm_block"]].reset_index()
    assert set(blocks[blocks["layers"] == 1]["limit"]) == {4, 5}
    assert set(blocks[blocks["layers"] == 2]["limit"]) == {6, 7, 8}
    assert (blocks["units"].min(), blocks["units"].max()) == (6, 60) and BLOCK_CONV == 3
    reach = blocks["layers"].map({1: BLOCK_CONV, 2: 2 * BLOCK_CONV - 1})
    assert set(blocks["limit"] - reach) == {1, 2, 3} and not blocks["censored"].any()
    # per configuration with the reproduction page's statements
    assert "remembers N + 1 to N + 3 positions from N = 4 to 24" in text
    seen = today.loc["lru"][~today.loc["lru", "censored"]]
    assert set(seen["limit"] - seen["units"]) == {1, 2, 3}
    assert (seen["units"].min(), seen["units"].max()) == (4, 24)
    assert ("in its block it holds at least as much from c = 4 on, and 1 position at c = 2, "
            "where a LayerNorm over two channels leaves the recurrence one sign per step") in text
    block, alone = (today.loc[a].set_index(["layers", "cells"])["limit"]
                    for a in ("lru_block", "lru"))
    wide = block.index.get_level_values("cells") >= 4
    assert (block[wide] >= alone[wide]).all() and wide.sum() == 8
    assert (block[~wide] == 1).all() and (~wide).sum() == 2
    assert _two_channels_give_a_sign()
    assert "started on its long-range ring it falls below N from N = 12" in text
    ring = today.loc["lru_ring"].set_index("units")["limit"]
    assert (ring[ring.index < 12] > ring.index[ring.index < 12]).all()
    assert (ring[ring.index >= 12] < ring.index[ring.index >= 12]).all()
    assert "Restricted to real lambda, the same unit holds 2 to 4 positions from N = 2 to 20" \
        in text
    assert set(today.loc["lru_real", "limit"]) == {2, 3, 4}
    assert (today.loc["lru_real", "units"].min(), today.loc["lru_real", "units"].max()) == (2, 20)
    assert ("The **selective SSM** holds 2 to 4 positions from N = 8 to 80 behind an affine "
            "input, at its best rate in 5 seeds (started on the real part of S4D-Lin, within one "
            "position of that at every size); in **Mamba's block** it holds 5 or 6 with one "
            "layer and 8 to 10 with two, from N = 14 to 140 (started on the real part of S4D-Lin, "
            "within one position of that): one to three more than its "
            "convolutions reach, far below its N (all 10 within their seeds' spread at twice the "
            "budget, where two layers of 10 hold 20: past p = 10 the target is one of a "
            "sequence's first six inputs)") in text
    assert set(today.loc["s6_bare", "limit"]) == {2, 3, 4}
    assert (today.loc["s6_bare", "units"].min(), today.loc["s6_bare", "units"].max()) == (8, 80)
    lin = today.loc["s6_bare_lin"].set_index(["layers", "cells"])
    real = today.loc["s6_bare"].set_index(["layers", "cells"])
    assert len(lin) == 10 and (lin["limit"] - real["limit"]).abs().max() == 1
    mlin = today.loc["mamba_lin"].set_index(["layers", "cells"])
    assert len(mlin) == 10 and (mlin["limit"] - today.loc["mamba"].set_index(
        ["layers", "cells"])["limit"]).abs().max() == 1
    mamba = today.loc["mamba"].set_index("layers")
    assert set(mamba.loc[1, "limit"]) == {5, 6} and set(mamba.loc[2, "limit"]) == {8, 10}
    assert (mamba["units"].min(), mamba["units"].max()) == (14, 140)
    reach = mamba.index.map({1: MAMBA_CONV, 2: 2 * MAMBA_CONV - 1}.get)   # the convolutions'
    assert set(mamba["limit"] - reach) == {1, 2, 3} and not mamba["censored"].any()
    assert (mamba["limit"] < mamba["units"] / 2).all()        # far below N
    mamba_marks = {k: v for k, v in headline.convergence({"today_cells"}).items()
                   if k[0] == "mamba"}
    assert len(mamba_marks) == 10 and all(v.startswith("yes") for v in mamba_marks.values())
    assert mamba_marks[("mamba", 2, 10)].endswith(": 10 -> 20)")
    # past p = 10 (= q_min) the lengths shift: the target is among the first q_max - q_min + 1
    grid = headline._grid_json("today_cells_mamba_budget_check-2x")
    assert (grid["fixed"]["q_min"], grid["fixed"]["q_max"]) == (10, 15)


def test_readme_is_the_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250
    start = lines.index("<!-- generated: headline (python -m memgrid.headline) -->")
    assert start < 60
    assert any(re.fullmatch(r"    python3 -m venv \.venv && .*&& memgrid run tune_configs/smoke"
                            r"\.yaml", ln) for ln in lines)
    ci = [ln for ln in lines if re.fullmatch(r"    python3 -m venv \.venv && .* pytest .*", ln)]
    assert len(ci) == 1 and ci[0].endswith("pytest -q"), "CI runs the full suite"
    assert any(ln.startswith("![") and "docs/figures/" in ln for ln in lines[:60])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_cite_only_files_the_repository_has(page):
    text = page.read_text()
    assert not re.search(r"\bsessions?\b", text, re.I), f"{page.name}: 'session' wording"
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name} links {target}, not in the repository"


WRITTEN_MD = {"report.md"}
"""Markdown files memgrid writes (memgrid analyze's report), which text may name"""


def test_the_repository_cites_only_markdown_it_holds():
    """Every Markdown file that the repository's text names (docs, code, tests, grids) is one
    the repository holds, or one memgrid writes: nothing points a reader at notes they do not
    have."""
    held = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts and ".git" not in p.parts}
    for folder in ("memgrid", "analysis", "benchmarks", "tune_configs", "tests", "examples", "docs"):
        for f in sorted((ROOT / folder).rglob("*")):
            if f.suffix not in (".py", ".md", ".yaml", ".c", ".h", ".sh"):
                continue
            for name in re.findall(r"([\w.-]+\.md)\b", f.read_text(errors="replace")):
                assert name in held | WRITTEN_MD, f"{f.relative_to(ROOT)} cites {name}, not in the repository"


def _means(name, **where):
    df = headline.points(name)
    for k, v in where.items():
        df = df[df[k] == v]
    return df.groupby("position")["loss"].mean()


def test_the_guide_lists_every_grid_file_with_its_points():
    """The guide's table of tune_configs/ names every grid file once, and its points column
    (`N`, `N (+ M tuning)`, `N each`, or one count per file named) is what each grid expands
    to."""
    from memgrid.grid_file import load_grid
    from memgrid.lr_tuning import tuning_points

    text = (ROOT / "docs" / "guide.md").read_text()
    table = text[text.index("| file | paper | axes | points |"):].split("\n\n")[0]
    named = []
    for line in table.splitlines()[2:]:
        first, *_, points = [c.strip() for c in line.strip("|").split("|")]
        files = re.findall(r"`([\w.]+\.yaml)`", first)
        counts = re.findall(r"(\d[\d,]*)(?: \(\+ (\d[\d,]*) tuning\))?", points)
        if points.endswith(" each"):
            counts = counts * len(files)
        assert len(counts) == len(files), line
        for name, (n, tuning) in zip(files, counts):
            grid = load_grid(str(ROOT / "tune_configs" / name))
            want = len(tuning_points(grid.points(), grid.tune_lr)) if grid.tune_lr else 0
            assert (int(n.replace(",", "")), int((tuning or "0").replace(",", ""))) == \
                (grid.n_points, want), name
        named += files
    assert sorted(named) == sorted(p.name for p in (ROOT / "tune_configs").glob("*.yaml"))


def _walked(archs: dict, arch: str) -> tuple[int, int, int]:
    """A walked cell of today_cells: (points trained, points of its axes, points left out past
    its settled limits), from memgrid.headline.today_archs."""
    return archs["have"][arch], archs["axes"][arch], archs["axes"][arch] - archs["want"][arch]


def test_reproduction_statements_hold_on_the_data():
    text = " ".join(REPRO.read_text().split())
    today_marks = headline.convergence({"today_cells"})      # the page's marks, read once

    def marks_of(arch):
        return {k[1:]: v for k, v in today_marks.items() if k[0] == arch}

    # Figure 4
    assert "Under both protocols the limit is 5 = c, and p = 6..8 stay in between" in text
    for name in ("fig4_rnn", "fig4_rnn-paper"):
        assert int(_limit(name, "rnn", 1, 5)["limit"]) == 5
        assert _means(name).loc[6:8].between(0.05, 0.25, inclusive="neither").all()
    assert "At the paper's budget p = 9, 10 sit near the 0.25 plateau" in text
    assert (_means("fig4_rnn-paper").loc[9:10] > 0.22).all()
    assert (_means("fig4_rnn").loc[9:10] < 0.2).all()
    # Figure 5
    assert "At the paper's budget the 5-unit LSTM learns only p <= 2" in text
    assert int(_limit("fig5_lstm-paper", "lstm", 1, 5)["limit"]) == 2
    assert "memorizes every p <= 5, as the paper conjectured, and more than the RNN" in text
    assert int(_limit("fig5_lstm", "lstm", 1, 5)["limit"]) > int(_limit("fig4_rnn", "rnn", 1, 5)
                                                                ["limit"]) == 5
    # Figure 6
    assert "every seed memorizes p = c for c = 1..10, and the limit is exactly c up to c = 7" in text
    assert "not every seed memorizes p = c at c = 2 and at every c >= 7" in text
    paper = headline.points("fig6_rnn-paper")
    one = paper[(paper["layers"] == 1) & (paper["position"] == paper["cells"])]
    short = sorted(c for c, s in one.groupby("cells")["loss"] if not (s < 0.05).all())
    assert short == [2, *range(7, 21)]
    assert "At twice the budget" in text and "nothing up to p = 10 moves" in text
    for check in ("fig6_tuned_budget_check-2x", "fig6_tuned_budget_check_wide-2x"):
        more = headline.points(check)
        less = headline.points("fig6_rnn_tuned")
        keys = more[headline.KEYS].drop_duplicates()
        less = less.merge(keys)[lambda d: d["seed"].isin(set(more["seed"]))]
        key = headline.KEYS + ["position"]
        a = less[less["position"] <= 10].groupby(key)["loss"].mean() < 0.05
        b = more[more["position"] <= 10].groupby(key)["loss"].mean() < 0.05
        assert a.equals(b.loc[a.index]), check
    # Section 4
    assert "At the paper's budget no limit passes the bound" in text
    assert all(headline.bound_counts(n)["above"] == 0
               for n in ("fig6_rnn-paper", "fig8_lstm-paper", "fig8_gru-paper"))
    # Figure 8
    assert ("Deeper gated stacks hold fewer positions at the paper's budget and more when "
            "trained to converge") in text
    for arch in ("lstm", "gru"):
        for name, deeper_holds_more in ((f"fig8_{arch}-paper", False), (f"fig8_{arch}", True)):
            lim = headline.limits(headline.points(name)).set_index(["layers", "cells"])["limit"]
            d = lim.loc[3] - lim.loc[1]
            assert ((d >= 0) if deeper_holds_more else (d <= 0)).all(), name
    # Figure 9
    assert "At the paper's budget fixed length loses two positions that random length" in text
    f = headline.points("fig9_rnn_fixed-paper").groupby(headline.KEYS + ["position"])["loss"].mean()
    r = headline.points("fig6_rnn-paper").groupby(headline.KEYS + ["position"])["loss"].mean()
    lost = f[(r.reindex(f.index) < 0.05) & (f >= 0.05)]
    assert len(lost) == 2
    assert "stay at the plateau at the paper's budget and are learned in most seeds" in text
    for l, c, p in [(1, 2, 10), (2, 2, 8), (2, 2, 9), (2, 2, 10)]:
        for name, ok in (("fig9_rnn_fixed-paper", lambda s: s.mean() > 0.2),
                         ("fig9_rnn_fixed", lambda s: (s < 0.05).sum() > len(s) / 2)):
            df = headline.points(name)
            assert ok(df[(df["layers"] == l) & (df["cells"] == c) & (df["position"] == p)]
                      ["loss"]), (name, l, c, p)
    # the newer cells
    assert "The LRU reaches N at every size; minGRU and minLSTM hold 1 or 2 positions" in text
    new = headline.limits(headline.points("new_cells")).set_index("arch")
    assert (new.loc["lru", "limit"] >= new.loc["lru", "units"]).all()
    assert set(new.loc[["mingru", "minlstm"], "limit"]) == {1, 2}
    mamba = headline.limits(headline.points("mamba_check")).set_index(["arch", "cells"])
    assert "The Mamba block memorizes p <= 5 at both sizes" in text
    assert list(mamba.loc["mamba", "limit"]) == [5, 5]
    assert "The bare SSM holds 2 or 3 positions. Both stay far below N." in text
    assert set(mamba.loc["s6_bare", "limit"]) == {2, 3} and (mamba["limit"] < mamba["units"] / 2).all()
    assert "block's limit stays 5 at c = 2 and moves to 6 at c = 4" in text
    more = headline.limits(headline.points("mamba_budget_check-2x")).set_index("cells")["limit"]
    assert (more.loc[2], more.loc[4]) == (5, 6)
    # today's cells, each at its tuned rate
    today = headline.points("today_cells")
    lim = headline.limits(today).set_index(headline.KEYS)
    check = headline.limits(headline.points("today_cells_budget_check-2x")).set_index(
        headline.KEYS)
    paired = headline.limits(today[today["seed"].isin(set(
        headline.points("today_cells_budget_check-2x")["seed"]))]).set_index(headline.KEYS)
    def checked_within_range(arch: str) -> int:
        """Asserts that every limit the check holds of `arch` lies in the run's seeds' own
        range on the seeds both hold; how many it holds."""
        keys = [k for k in check.index if k[0] == arch]
        for key in keys:
            assert paired.loc[key, "seed_min"] <= check.loc[key, "limit"] \
                <= paired.loc[key, "seed_max"], key
        return len(keys)

    assert "the limit on seeds 0..2 moves by no more than the spread of the seeds' own" in text
    assert "**minGRU remembers 2 positions, whatever its size.**" in text
    mingru = lim.loc["mingru"]
    assert "Its limit is 1 or 2 at every size from N = 2 to N = 20" in text
    assert set(mingru["limit"]) == {1, 2} and (mingru["units"].min(), mingru["units"].max()) \
        == (2, 20)
    assert "and 2 wherever c >= 6 or l = 2" in text
    two = [(l, c) for l, c in mingru.index if c >= 6 or l == 2]
    assert (mingru.loc[two, "limit"] == 2).all()
    assert "the tuning chose rates from 0.003 to 0.03" in text
    rates = today[today["arch"] == "mingru"]["lr"]
    assert (rates.min(), rates.max()) == (0.003, 0.03)
    assert "at twice the budget every limit stays within its seeds' own range" in text
    assert checked_within_range("mingru") == len(mingru)
    minlstm = lim.loc["minlstm"]
    assert "**minLSTM likewise.** Its limit is 1 or 2 at every size from N = 2 to N = 20" in text
    assert set(minlstm["limit"]) == {1, 2} and (minlstm["units"].min(),
                                                 minlstm["units"].max()) == (2, 20)
    assert "and 2 from c = 8 at one layer and from c = 4 at two" in text
    two = [(l, c) for l, c in minlstm.index if (l == 1 and c >= 8) or (l == 2 and c >= 4)]
    assert (minlstm.loc[two, "limit"] == 2).all()
    assert (minlstm.drop(two)["limit"] == 1).all()
    assert "its tuning chose rates from 0.01 to 0.1" in text
    rates = today[today["arch"] == "minlstm"]["lr"]
    assert (rates.min(), rates.max()) == (0.01, 0.1)
    # past the tuning's largest rate: the configurations it chose it for, at 0.3 and 1.0
    assert "Where it chose 0.1, the largest rate it tries (one layer of 4 and of 6, limit 1, " \
        "the seeds' own 1..2), the next rate past it, 0.3, gives 2 at both, and 1.0 gives 0 " \
        "and 1" in " ".join(text.split())
    at_top = today[(today["arch"] == "minlstm") & (today["lr"] == 0.1)]
    assert sorted(set(zip(at_top["layers"], at_top["cells"]))) == [(1, 4), (1, 6)]
    assert minlstm.loc[[(1, 4), (1, 6)], ["limit", "seed_min", "seed_max"]].values.tolist() == \
        [[1, 1, 2], [1, 1, 2]]
    edge = headline.points("today_cells_rate_edge_check")
    past = {lr: headline.limits(edge[edge["lr"] == lr]).set_index("cells")["limit"].tolist()
            for lr in (0.3, 1.0)}
    assert past == {0.3: [2, 2], 1.0: [0, 1]}
    assert checked_within_range("minlstm") == len(minlstm)
    lru_t = lim.loc["lru"]
    assert "**The LRU remembers more than N.**" in text
    assert "With one layer its limit is N + 1 from N = 4 to N = 16 and N + 2 at N = 20" in text
    one = lru_t.loc[1]
    assert list(one["limit"] - one["units"]) == [1, 1, 1, 1, 2] and list(one["units"]) == \
        [4, 8, 12, 16, 20] and not one["censored"].any()
    assert "with two, N + 1 at N = 8 and 16 and N + 3 at N = 24" in text
    two = lru_t.loc[2]
    assert list((two["limit"] - two["units"])[:3]) == [1, 1, 3] and list(two["units"]) == \
        [8, 16, 24, 32, 40] and not two["censored"][:3].any()
    assert "at N = 32 and 40 it passes p = 30, the last position the grid trains" in text
    assert list(two["limit"][3:]) == [30, 30] and two["censored"][3:].all()
    assert "Its tuning chose 0.003 or 0.01" in text
    assert set(today[today["arch"] == "lru"]["lr"]) == {0.003, 0.01}
    assert "every one of its 10 limits stays within its seeds' spread, the two past p = 30" in text
    marks = today_marks
    assert len(lru_t) == 10 and all(marks[("lru", *k)].startswith("yes") for k in lru_t.index)
    assert "**The same unit with real lambda holds 2 to 4.**" in text
    real = lim.loc["lru_real"]
    assert "holds 2 positions with one layer at every size from N = 2 to N = 10" in text
    assert (real.loc[1, "limit"] == 2).all() and list(real.loc[1, "units"]) == [2, 4, 6, 8, 10]
    assert "and 3 or 4 with two, from N = 4 to N = 20" in text
    assert set(real.loc[2, "limit"]) == {3, 4} and list(real.loc[2, "units"]) == [4, 8, 12, 16, 20]
    assert "At twice the budget 9 of its 10 limits stay within their seeds' spread" in text
    assert "the one at N = 10 with one layer moves from 2 to 3" in text
    moved = [k for k in real.index if marks[("lru_real", *k)].startswith("no")]
    assert moved == [(1, 10)] and marks[("lru_real", 1, 10)].endswith(": 2 -> 3)")
    assert "**The RNN beside them reaches its bound.**" in text
    rnn = lim.loc["rnn"]
    assert "reaches N - (l - 1) at every size but the largest, two layers of 10 (16 of 19)" in text
    short = rnn[rnn["limit"] < rnn["bound"]]
    assert list(short.index) == [(2, 10)] and tuple(short.iloc[0][["limit", "bound"]]) == (16, 19)
    assert "one layer passes N (12 at N = 8, 16 at N = 10)" in text
    above = rnn.loc[1][rnn.loc[1]["limit"] > rnn.loc[1]["units"]]
    assert list(zip(above["units"], above["limit"])) == [(8, 12), (10, 16)]
    assert "**The GRU reaches its bound too, and passes it from c = 6.**" in text
    gru = lim.loc["gru"]
    assert "reaches N - (l - 1) at every size but two layers of 4 (9 of 10; there 6 against 7)" \
        in text
    short = gru[gru["limit"] < gru["bound"]]
    assert len(gru) == 10 and list(short.index) == [(2, 4)]
    assert tuple(short.iloc[0][["limit", "bound"]]) == (6, 7)
    assert "one layer holds 7 positions at N = 6, 10 at N = 8 and 13 at" in text
    assert "two layers hold 14 at N = 12 and 26 at N = 16 and 20" in text
    above = gru[gru["limit"] > gru["bound"]]
    assert [(l, u, lm) for (l, _), u, lm in zip(above.index, above["units"], above["limit"])] \
        == [(1, 6, 7), (1, 8, 10), (1, 10, 13), (2, 12, 14), (2, 16, 26), (2, 20, 26)]
    assert (above.index.get_level_values("cells") >= 6).all() and not above["censored"].any()
    assert "**The LSTM passes N by one at one layer.**" in text
    lstm = lim.loc["lstm"]
    assert "one layer holds N + 1 positions at every size from N = 2 to N = 10" in text
    assert list(lstm.loc[1, "limit"] - lstm.loc[1, "units"]) == [1] * 5
    assert list(lstm.loc[1, "units"]) == [2, 4, 6, 8, 10] and not lstm["censored"].any()
    assert ("Two layers pass N - (l - 1) at N = 4 and 8 (4 and 9), reach it at N = 12 (11), and "
            "fall short of it at N = 16 and 20 (12 and 15)") in text
    assert list(zip(lstm.loc[2, "units"], lstm.loc[2, "limit"], lstm.loc[2, "bound"])) == \
        [(4, 4, 3), (8, 9, 7), (12, 11, 11), (16, 12, 15), (20, 15, 19)]
    assert "No budget check covers the RNN's, the GRU's or the LSTM's limits yet" in text
    assert not any(k[0] in ("rnn", "gru", "lstm") for k in marks)
    assert "**The bare SSM reads its memory, and holds 2 to 4 positions.**" in text
    s6 = lim.loc["s6_bare"]
    assert "holds 3 positions with one layer at every size from N = 8 to N = 40" in text
    assert (s6.loc[1, "limit"] == 3).all() and list(s6.loc[1, "units"]) == [8, 16, 24, 32, 40]
    assert "and with two 4 from N = 32 to N = 80 (2 at N = 16)" in text
    assert list(s6.loc[2, "limit"]) == [2, 4, 4, 4, 4] and list(s6.loc[2, "units"]) == \
        [16, 32, 48, 64, 80] and not s6["censored"].any()
    assert "Its tuning chose 0.03, and 0.01 for two layers of 6 to 10" in text
    rates = today[today["arch"] == "s6_bare"].groupby(["layers", "cells"])["lr"].unique()
    assert {k: list(v) for k, v in rates.items()} == {
        (l, c): [0.01 if (l, c) in ((2, 6), (2, 8), (2, 10)) else 0.03]
        for l in (1, 2) for c in (2, 4, 6, 8, 10)}
    assert "At twice the budget 9 of its 10 limits stay where they are, and the one at N = 16" \
        " moves from 2 to 4, within its seeds' own range (2..4): all 10 are converged" in text
    s6_marks = marks_of("s6_bare")
    assert len(s6_marks) == 10 and all(v.startswith("yes") for v in s6_marks.values())
    assert [k for k, v in s6_marks.items() if "->" in v] == [(2, 2)]
    assert s6_marks[(2, 2)].endswith(": 2 -> 4)") and tuple(s6.loc[(2, 2), ["seed_min",
                                                                            "seed_max"]]) == (2, 4)
    assert "same SSM holds 2 to 4" in text and set(s6["limit"]) == {2, 3, 4}
    assert "**Mamba's block holds one to three positions more than its convolutions reach.**" \
        in text
    mb = lim.loc["mamba"]
    assert "holds 5 or 6 positions with one layer from N = 14 to N = 70" in text
    assert set(mb.loc[1, "limit"]) == {5, 6} and list(mb.loc[1, "units"]) == [14, 28, 42, 56, 70]
    assert "where its convolution of width 4 reaches 4, and 8 to 10 with two" in text
    assert MAMBA_CONV == 4 and set(mb.loc[2, "limit"]) == {8, 10} and not mb["censored"].any()
    assert "from N = 28 to N = 140, where its two convolutions reach 7" in text
    assert list(mb.loc[2, "units"]) == [28, 56, 84, 112, 140]
    assert "one seed of two layers of 10 holds 24" in text and mb.loc[(2, 10), "seed_max"] == 24
    rates = today[today["arch"] == "mamba"]["lr"]
    assert "Its tuning chose 0.003 to 0.03" in text
    assert (rates.min(), rates.max()) == (0.003, 0.03)
    assert "all 10 of its limits stay within their seeds' spread, and two layers of 10 move " \
        "from 10 to 20 (seeds 9..30 at twice the budget, 10..24 at once)" in text
    mamba_marks = marks_of("mamba")
    assert len(mamba_marks) == 10 and all(v.startswith("yes") for v in mamba_marks.values())
    more = headline.points("today_cells_mamba_budget_check-2x")
    check = headline.limits(more[more["arch"] == "mamba"]).set_index(["layers", "cells"])
    assert check.loc[(2, 10), "limit"] == 20 and not check.loc[(2, 10), "censored"]
    assert tuple(check.loc[(2, 10), ["seed_min", "seed_max"]]) == (9, 30)
    assert lim.loc[("mamba", 2, 10), "limit"] == 10
    assert tuple(lim.loc[("mamba", 2, 10), ["seed_min", "seed_max"]]) == (10, 24)
    assert "two layers of 8 fail p = 11 on every seed and pass p = 12 to 19 on every seed" in text
    eight = more[(more["arch"] == "mamba") & (more["layers"] == 2) & (more["cells"] == 8)].assign(
        ok=lambda d: d["loss"] < 0.05)
    passed = eight.groupby("position")["ok"].agg(["sum", "size"])
    assert passed.loc[11, "sum"] == 0
    assert (passed.loc[12:19, "sum"] == passed.loc[12:19, "size"]).all()
    assert passed.loc[20, "sum"] < passed.loc[20, "size"]
    assert "**minGRU's block, like Mamba's, holds one to three positions more than its " \
        "convolutions reach.**" in text
    blk = lim.loc["mingru_block"]
    reach = {1: BLOCK_CONV, 2: 2 * BLOCK_CONV - 1}
    assert "holds 4 positions with one layer at every size from N = 6 to N = 30" in text
    assert set(blk.loc[1, "limit"]) == {4} and list(blk.loc[1, "units"]) == [6, 12, 18, 24, 30]
    assert "6 to 8 with two, from N = 12 to N = 60, where its two convolutions reach 5" in text
    assert set(blk.loc[2, "limit"]) == {6, 7, 8} and list(blk.loc[2, "units"]) == [12, 24, 36,
                                                                                   48, 60]
    assert BLOCK_CONV == 3 and not blk["censored"].any()
    assert {int(r.limit) - reach[l] for (l, _), r in blk.iterrows()} == {1, 2, 3}
    assert set(lim.loc["mingru", "limit"]) == {1, 2}
    rates = today[today["arch"] == "mingru_block"]["lr"]
    assert "Its tuning chose 0.003 to 0.03. It is the first cell the run walked" in text
    assert (rates.min(), rates.max()) == (0.003, 0.03)
    archs = headline.today_archs()
    assert "538 of its 1,350 points trained, and the 812 past its settled limits were left out" \
        in text
    assert _walked(archs, "mingru_block") == (538, 1350, 812)
    marks = marks_of("mingru_block")
    assert "At twice the budget (`tune_configs/today_cells_block_budget_check.yaml`, its own " \
        "tuning, walked) 8 of its 10 limits stay within their seeds' spread" in text
    assert len(marks) == 10 and sum(v.startswith("yes") for v in marks.values()) == 8
    assert "One layer of 8 moves from 4 to 5, where its five seeds all held 4" in text
    assert marks[(1, 8)] == "no (2x, seeds 0..2: 4 -> 5)"
    assert tuple(blk.loc[(1, 8), ["seed_min", "seed_max"]]) == (4, 4)
    assert "two layers of 10 from 8 to at least 20, the last position both runs trained" in text
    assert marks[(2, 10)] == "no (2x, seeds 0..2: 8 -> 20+)"
    assert today[(today["arch"] == "mingru_block") & (today["layers"] == 2)
                 & (today["cells"] == 10)]["position"].max() == 20
    check = headline.limits(headline.points("today_cells_block_budget_check-2x")).set_index(
        ["layers", "cells"])
    assert "each of their seeds fails a position here and there (its own limit 8 to 22) while " \
        "the mean over seeds passes every position up to 29; one seed of two layers of 8 holds " \
        "28" in " ".join(text.split())
    assert tuple(check.loc[(2, 10), ["limit", "seed_min", "seed_max"]]) == (29, 8, 22)
    assert check.loc[(2, 10), "p_max"] == 30 and not check.loc[(2, 10), "censored"]
    assert check.loc[(2, 8), "seed_max"] == 28 and check.loc[(2, 8), "p_max"] == 30
    assert "**minLSTM's block holds what minGRU's does.**" in text
    mlb = lim.loc["minlstm_block"]
    assert "holds 4 positions with one layer from N = 6 to N = 24 and 5 at N = 30" in text
    assert list(mlb.loc[1, "limit"]) == [4, 4, 4, 4, 5]
    assert list(mlb.loc[1, "units"]) == [6, 12, 18, 24, 30]
    assert "and 7 or 8 with two, from N = 12 to N = 60" in text
    assert set(mlb.loc[2, "limit"]) == {7, 8} and list(mlb.loc[2, "units"]) == [12, 24, 36, 48, 60]
    assert not mlb["censored"].any()
    assert {int(r.limit) - reach[l] for (l, _), r in mlb.iterrows()} == {1, 2, 3}
    assert set(lim.loc["minlstm", "limit"]) == {1, 2}
    assert "one seed of two layers of 8 holds 17" in text
    assert mlb.loc[(2, 8), "seed_max"] == 17 and (mlb.drop((2, 8))["seed_max"] < 17).all()
    rates = today[today["arch"] == "minlstm_block"]["lr"]
    assert "Its tuning chose 0.003 to 0.03. 500 of its 1,350 points trained, and the 850 past" \
        in " ".join(text.split())
    assert (rates.min(), rates.max()) == (0.003, 0.03)
    assert _walked(archs, "minlstm_block") == (500, 1350, 850)
    # the LRU's block against the LRU alone
    flat = " ".join(text.split())
    assert "**The LRU's block holds at least what the LRU does, but at c = 2.**" in flat
    lb, lru = lim.loc["lru_block"], lim.loc["lru"]
    assert "holds with one layer N + 1 positions from N = 8 to N = 16 and N + 2 at N = 20, the " \
        "LRU's own limits" in flat
    one = lb.loc[1].drop(2)
    assert list(one["limit"] - one["units"]) == [1, 1, 1, 2] and list(one["units"]) == [8, 12, 16, 20]
    assert list(one["limit"]) == list(lru.loc[1].drop(2)["limit"]) and not one["censored"].any()
    assert "and with two it passes p = 30, the last position the grid trains, at every size " \
        "from N = 16 to N = 40, where the LRU alone holds 17 at N = 16 and 27 at N = 24" in flat
    two = lb.loc[2].drop(2)
    assert (two["limit"] == 30).all() and two["censored"].all() and \
        list(two["units"]) == [16, 24, 32, 40]
    assert list(lru.loc[2].loc[[4, 6], "limit"]) == [17, 27]
    assert "With c = 2 it holds 1 position at both depths, where the LRU alone holds N + 1" in flat
    assert list(lb.xs(2, level="cells")["limit"]) == [1, 1]
    assert list(lru.xs(2, level="cells")["limit"] - lru.xs(2, level="cells")["units"]) == [1, 1]
    assert "a LayerNorm over two channels gives ±(1, -1) before its gain and bias whenever the " \
        "two differ by more than a few hundredths" in flat and _two_channels_give_a_sign()
    rates = today[today["arch"] == "lru_block"]["lr"]
    assert "Its tuning chose 0.003 or 0.01. 1,000 of its 1,220 points trained, and the 220 past" \
        in flat and set(rates) == {0.003, 0.01}
    assert _walked(archs, "lru_block") == (1000, 1220, 220)
    # the LRU on its long-range ring against its default initialisation
    assert "**On its long-range ring the LRU holds fewer.**" in flat
    ring = lim.loc["lru_ring"]
    assert not ring["censored"].any()
    assert "holds N + 1 positions at N = 4 and 8 with one layer and at N = 8 with two, as the " \
        "LRU with its default initialisation, and falls below N from there on" in flat
    near = ring[ring["units"] <= 8]
    assert list(zip(near["units"], near["limit"])) == [(4, 5), (8, 9), (8, 9)]
    assert all((lru.loc[k, "limit"] == r.limit) for k, r in near.iterrows())
    assert (ring[ring["units"] > 8]["limit"] < ring[ring["units"] > 8]["units"]).all()
    assert "9, 11 and 14 with one layer at N = 12, 16 and 20 (the default: 13, 17 and 22)" in flat
    assert list(ring.loc[1].loc[[6, 8, 10], "limit"]) == [9, 11, 14]
    assert list(lru.loc[1].loc[[6, 8, 10], "limit"]) == [13, 17, 22]
    assert "14 to 21 with two from N = 16 to N = 40 (the default: 17, 27 and past 30)" in flat
    assert list(ring.loc[2].loc[[4, 10], "limit"]) == [14, 21] and \
        ring.loc[2].drop(2)["limit"].between(14, 21).all()
    assert list(lru.loc[2].loc[[4, 6], "limit"]) == [17, 27] and \
        lru.loc[2].loc[[8, 10], "censored"].all()
    assert "saw it fall short already at N = 4 and 8; at its best rate it does not there" in flat
    one_rate = headline.limits(headline.points("lru_check")).set_index(headline.KEYS)
    assert (one_rate.loc["lru_ring", "limit"] < one_rate.loc["lru", "limit"]).all()
    rates = today[today["arch"] == "lru_ring"]["lr"]
    assert "Its tuning chose 0.01 to 0.1. 800 of its 1,220 points trained, and the 420 past" \
        in flat and (rates.min(), rates.max()) == (0.01, 0.1)
    assert _walked(archs, "lru_ring") == (800, 1220, 420)
    # the bare SSM on the real part of S4D-Lin against S4D-Real
    assert "**Started on the real part of S4D-Lin, the bare SSM holds what it does on " \
        "S4D-Real.**" in flat
    lin, real = lim.loc["s6_bare_lin"], lim.loc["s6_bare"]
    assert not lin["censored"].any()
    assert "holds 3 positions with one layer from N = 16 to N = 40 (2 at N = 8), and 4 or 5 " \
        "with two from N = 32 to N = 80 (1 at N = 16): within one position of S4D-Real's limit " \
        "at every size" in flat
    assert list(lin.loc[1, "limit"]) == [2, 3, 3, 3, 3] and list(lin.loc[1, "units"]) == [8, 16, 24, 32, 40]
    assert list(lin.loc[2, "limit"]) == [1, 4, 4, 5, 4] and list(lin.loc[2, "units"]) == [16, 32, 48, 64, 80]
    assert (lin["limit"] - real["limit"]).abs().max() == 1
    from memgrid.cells import CELLS
    a = lambda arch: CELLS[arch].init("a_log", (1, 4), 1, 1, lambda n: torch.rand(1, n),
                                      {"w_in": torch.zeros(1, 1)})
    assert "A started at -1/2 for every state number" in flat and "starts at A = -(1..4)" in flat
    assert (-a("s6_bare_lin").exp()).tolist() == [[-0.5] * 4]
    assert (-a("s6_bare").exp()).tolist() == [[-1.0, -2.0, -3.0, -4.0]]
    rates = today[today["arch"] == "s6_bare_lin"]["lr"]
    assert "Its tuning chose 0.01 or 0.03. 320 of its 1,430 points trained, and the 1,110 past" \
        in flat and set(rates) == {0.01, 0.03}
    assert _walked(archs, "s6_bare_lin") == (320, 1430, 1110)
    marks = marks_of("s6_bare_lin")
    assert "all 10 of its limits stay within their seeds' spread: six stay where they are, three " \
        "move by one position, and two layers of 2 move from 1 to 3, where its seeds hold 1 to 4" \
        in flat
    assert len(marks) == 10 and all(v.startswith("yes (2x, seeds 0..2") for v in marks.values())
    moved = {k: v.split(": ")[1].rstrip(")") for k, v in marks.items() if ": " in v}
    assert len(moved) == 4 and moved.pop((2, 2)) == "1 -> 3"
    assert all(abs(int(a) - int(b)) == 1 for a, b in (m.split(" -> ") for m in moved.values()))
    assert tuple(lin.loc[2].loc[2, ["seed_min", "seed_max"]]) == (1, 4)
    # Mamba's block on the real part of S4D-Lin against S4D-Real
    assert "**Started on the real part of S4D-Lin, Mamba's block holds what it does on " \
        "S4D-Real.**" in flat
    mlin, mreal = lim.loc["mamba_lin"], lim.loc["mamba"]
    assert not mlin["censored"].any() and (mlin["units"] == mreal["units"]).all()
    assert "holds Mamba's own limits with one layer, 5 positions at N = 14 and 6 from N = 28 to " \
        "N = 70, and 7 to 11 with two, from N = 28 to N = 140: within one position of Mamba on " \
        "S4D-Real at every size" in flat
    assert list(mlin.loc[1, "limit"]) == list(mreal.loc[1, "limit"]) == [5, 6, 6, 6, 6]
    assert list(mlin.loc[1, "units"]) == [14, 28, 42, 56, 70]
    assert (mlin.loc[2, "limit"].min(), mlin.loc[2, "limit"].max()) == (7, 11)
    assert list(mlin.loc[2, "units"]) == [28, 56, 84, 112, 140]
    assert (mlin["limit"] - mreal["limit"]).abs().max() == 1
    assert "with its SSM's A started at -1/2 for every state number" in flat
    assert (-a("mamba_lin").exp()).tolist() == [[-0.5] * 4]
    assert (-a("mamba").exp()).tolist() == [[-1.0, -2.0, -3.0, -4.0]]
    rates = today[today["arch"] == "mamba_lin"]["lr"]
    assert "Its tuning chose 0.01 or 0.03. 540 of its 1,490 points trained, and the 950 past" \
        in flat and set(rates) == {0.01, 0.03}
    assert _walked(archs, "mamba_lin") == (540, 1490, 950)
    marks = marks_of("mamba_lin")
    assert "grown by it) 8 of its 10 limits stay within their seeds' spread. On seeds 0..2 two " \
        "layers of 10 move from 10 to at least 12, the last position both runs trained, and two " \
        "layers of 8 from 14 to at least 16, which may or may not pass their seeds' spread (9 " \
        "to 13; no mark)" in flat
    assert len(marks) == 9 and sum(v.startswith("yes (2x, seeds 0..2") for v in marks.values()) == 8
    assert (2, 8) not in marks and marks[(2, 10)] == "no (2x, seeds 0..2: 10 -> 12+)"
    assert tuple(mlin.loc[(2, 8), ["seed_min", "seed_max"]]) == (9, 13)
    assert today[(today["arch"] == "mamba_lin") & (today["layers"] == 2) & (today["cells"] == 8)][
        "position"].max() == 16
    alone = headline.limits(headline.points("today_cells_mamba_budget_check-2x")).set_index(
        ["arch", "layers", "cells"]).loc["mamba_lin"]
    assert "(the check alone holds 23 and 24 there)" in flat
    assert sorted(alone.loc[[(2, 8), (2, 10)], "limit"]) == [23, 24]
    # the history: every seed of two layers of 8 and 10 fails p = 9, most pass from p = 10
    wide = today[(today["arch"] == "mingru_block") & (today["layers"] == 2)
                 & (today["cells"] >= 8)].assign(ok=lambda d: d["loss"] < 0.05)
    by_p = wide.groupby("position")["ok"].agg(["sum", "size"])
    assert by_p.loc[9, "sum"] == 0 and by_p.loc[10, "sum"] > by_p.loc[10, "size"] / 2
    assert "every seed fails p = 9 and most pass again from p = 10" in " ".join(
        (ROOT / "docs" / "history.md").read_text().split())
    assert "both minimal gated cells hold 2 positions at N = 20" in text
    assert (lim.loc[["mingru", "minlstm"]].query("units == 20")["limit"] == 2).all()
    assert "(one rate, 2 seeds, c = 2 and 5) said the same of these two cells" in text
    assert set(new.loc[["mingru", "minlstm"], "limit"]) <= {1, 2}
    lru = headline.limits(headline.points("lru_check")).set_index(["arch", "cells"])
    assert "With its phase the LRU memorizes one position more than N at both sizes" in text
    assert list(lru.loc["lru", "limit"] - lru.loc["lru", "units"]) == [1, 1]
    assert "restricted to real lambda the same unit holds 2 positions at c = 2 and at c = 4" in text
    assert list(lru.loc["lru_real", "limit"]) == [2, 2]
    assert "The long-range ring holds fewer positions than the default one" in text
    assert (lru.loc["lru_ring", "limit"] < lru.loc["lru", "limit"]).all()


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown page's headings."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_section_links_land_on_a_heading(page):
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", page.read_text()):
        dest = (page.parent / target) if target else page
        if dest.suffix == ".md" and dest.exists():
            assert anchor in _anchors(dest), f"{page.name} links {target}#{anchor}: no such heading"


def test_what_the_walk_saves_is_what_the_guide_says():
    """The guide's share of training epochs the walk skips, replayed (memgrid.walk.replay) on
    the today_cells cells stored whole: every limit the same (tests/test_walk.py), fewer epochs."""
    from memgrid.config import Walk
    from memgrid.grid_file import grid_from_identity
    from memgrid.lr_tuning import grid_points
    from memgrid.walk import replay

    folder = ROOT / "docs" / "data" / "today_cells"
    df = headline.points("today_cells")
    epochs = dict(zip(df["point_id"], df["epochs"]))
    grid = grid_from_identity(headline._grid_json("today_cells"))
    by_arch: dict[str, list] = {}
    for p in grid_points(grid, str(folder), partial=True):
        by_arch.setdefault(p.arch, []).append(p)
    whole = {a: pts for a, pts in by_arch.items() if all(p.point_id in epochs for p in pts)}
    assert len(whole) >= 9
    losses = dict(zip(df["point_id"], df["loss"].astype(float)))
    total = {a: sum(epochs[p.point_id] for p in pts) for a, pts in whole.items()}

    def saved(band: int) -> dict[str, int]:
        return {a: total[a] - sum(epochs[i] for i in replay(pts, losses, Walk(band=band)))
                for a, pts in whole.items()}

    def overall(s: dict[str, int]) -> int:
        return round(100 * sum(s.values()) / sum(total.values()))

    guide = " ".join((ROOT / "docs" / "guide.md").read_text().split())
    m = re.search(r"trained whole it skips (\d+) % of their training epochs \((\d+)-(\d+) % per "
                  r"cell\)", guide)
    assert m, "the guide's sentence on what the walk saves"
    four = saved(4)
    share = [100 * four[a] / total[a] for a in whole]
    assert int(m[1]) == overall(four)
    assert (int(m[2]), int(m[3])) == (round(min(share)), round(max(share)))
    history = " ".join((ROOT / "docs" / "history.md").read_text().split())
    m = re.search(r"skips (\d+) % of the training epochs position by position\. Bands of 2, 3, 4 "
                  r"and 6 positions per round skip (\d+), (\d+), (\d+) and (\d+) %", history)
    assert m, "the history's sentence on the walk's bands"
    assert [int(x) for x in m.groups()] == [overall(saved(b)) for b in (1, 2, 3, 4, 6)]
    m = re.search(r"fail twice in a row, which skips (\d+) % of the nine cells' epochs at bands "
                  r"of 4", history)
    assert m and len(whole) == 9, "the history's sentence on two failures in a row"
    assert int(m[1]) == overall({a: total[a] - sum(epochs[i] for i in replay(pts, losses,
                                                                          Walk(4, past=2)))
                                 for a, pts in whole.items()})
