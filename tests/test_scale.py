"""Grids of the paper's full size and beyond (issue 12): point ids stay the keys of the results
already stored while a grid's are computed at once, a pack travels to its trial as a small
spec, the time left weighs packs by the cost model, and a long start says what it does."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path
from collections import Counter

import pandas as pd
import pytest
import torch

from memgrid.results import TUNING, done_ids, read_grid_identity
from memgrid.config import ID_OMITTED_AT, POINT_FIELDS, Grid, Point
from memgrid.grid_file import grid_from_identity, parse_grid
from memgrid.packs import (pack_cost, pack_id, pack_seconds, pack_spec, plan_packs, spec_pack_id,
                           spec_points)
from memgrid.lr_tuning import grid_points
from memgrid.run.plan import NOTICE_POINTS
from memgrid.run.progress import Progress
from memgrid.lr_tuning import tuning_points
from memgrid.walk import left_out

from .conftest import ROOT, memgrid_cli, write_grid


def reference_id(p: Point) -> str:
    """point_id's definition, as every stored point got it: sha256 of the sorted JSON of every
    setting (a setting added later left out at the value older points had)."""
    d = dataclasses.asdict(p)
    for k, v in ID_OMITTED_AT.items():
        if d[k] == v:
            del d[k]
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Point ids: the same as before, computed once per grid.

PINNED = {  # computed by memgrid before the ids of a grid were computed at once (commit e1d6eca)
    Point("rnn", 1, 5, 3, 0): "1ead0bb40e4259bb",
    Point("lstm", 3, 10, 10, 9, lr=0.03, steps_per_epoch=8): "858966809790e092",
    Point("gru", 2, 7, 12, 4, q_min=10, q_max=10, readout="linear", plateau=False,
          tbptt=5): "59fac7c617dd3cb8",
    Point("esn", 1, 50, 20, 3, spectral_radius=0.95, connectivity=0.2, ridge=1e-8, mc_low=-0.8,
          mc_high=0.8): "cb0d836e6c018e71",
    Point("rnn", 1, 1, 1, 0, lr=1e-5, momentum=0.0, max_epochs=1, solved_loss=0.0,
          mc_length=0): "01c1ecd1b9289ced",
}
# grid.json of three paper grids as the previous version wrote it (protocols converged,
# converged, paper), and the ids of their first, middle and last points then
_FILE = {"eval_every": 25, "eval_size": 1024, "plateau": True, "plateau_loss": 0.25,
         "plateau_tol": 0.01, "q_max": 15, "q_min": 10, "readout": "sum", "solved_loss": 0.01,
         "tbptt": 0, "long_positions": "shift", "batch_size": 128, "max_epochs": 5000,
         "momentum": 0.9, "patience": 2000}
CONVERGED = dict(_FILE, lr={"gru": 0.03, "lstm": 0.03, "rnn": 0.01}, steps_per_epoch=8)
PAPER_FIXED = dict(_FILE, lr=0.003, steps_per_epoch=1, q_max=10, long_positions="error")


def _axes(arch: str, layers: int, cells: int, positions: int, seeds: int) -> dict:
    return {"arch": [arch], "layers": list(range(1, layers + 1)),
            "cells": list(range(1, cells + 1)), "position": list(range(1, positions + 1)),
            "seed": list(range(seeds))}


PINNED_GRIDS = {
    "fig6_rnn": ({"axes": _axes("rnn", 5, 20, 20, 5), "fixed": CONVERGED},
                 ("81bf107af9633814", "611bccb03cbca3aa", "4568017ca594fee0")),
    "fig8_gru": ({"axes": _axes("gru", 3, 10, 10, 10), "fixed": CONVERGED},
                 ("411f5256c9606b47", "6400ac7ae9f38c13", "2c3236d7cc12dfdc")),
    "fig9_rnn_fixed-paper": ({"axes": _axes("rnn", 3, 10, 10, 10), "fixed": PAPER_FIXED},
                             ("74ad38ac2fc2a150", "011a9a9ec3a1854a", "b64037ebbb53b70b")),
}


def _pinned(name: str) -> Grid:
    return grid_from_identity({"name": name, **PINNED_GRIDS[name][0]})


def test_point_ids_are_the_ones_stored_before():
    for p, want in PINNED.items():
        assert p.point_id == want == reference_id(p)
    for name, (_, (first, middle, last)) in PINNED_GRIDS.items():
        pts = _pinned(name).points()
        assert (pts[0].point_id, pts[len(pts) // 2].point_id, pts[-1].point_id) == \
            (first, middle, last), name


SHIPPED = ["esn_vs_rnn", "esn_vs_rnn-paper", "fig4_rnn", "fig4_rnn-paper", "fig5_lstm",
           "fig5_lstm-paper", "fig6_slice", "fig6_slice-paper", "fig9_slice", "fig9_slice-paper",
           "tuned_lr_check", "untuned_check", "budget_check", "budget_check-4x",
           "budget_check-constant", "budget_check-constant-4x", "budget_lr_search_cosine",
           "budget_lr_search_cosine_c10", "fig6_rnn-paper", "fig9_rnn_fixed-paper", "fig8_gru-paper",
           "fig8_lstm-paper", "new_cells", "fig9_rnn_fixed", "fig8_gru", "fig8_lstm",
           "big_stack_check-noplateau", "depth_lr_check", "gated_lr_check",
           "fig6_rnn_tuned", "fig6_tuned_budget_check-2x", "fig6_tuned_budget_check_wide-2x",
           "mamba_check", "mamba_budget_check-2x", "lru_check", "today_cells_budget_check-2x",
           "today_cells_lru_budget_check-2x", "today_cells_ssm_budget_check-2x",
           "today_cells_mamba_budget_check-2x", "today_cells_rate_edge_check"]
"""docs/data's results folders of whole grids, written by this and earlier versions (the
`-rungs` folders hold replays at shorter budgets, not a grid's points)"""
SHIPPED_PARTLY: list[str] = ["fig6_rnn", "today_cells", "today_cells_block_budget_check-2x"]
"""docs/data's folders of grids that hold only some of their points (runs still under way)"""


def test_the_shipped_results_are_found_by_their_grids():
    """Every point stored in docs/data is a point its grid.json expands to, and every point of
    the grid is stored (of a grid still running: some)."""
    for name in SHIPPED + SHIPPED_PARTLY:
        d = ROOT / "docs" / "data" / name
        grid = grid_from_identity(read_grid_identity(str(d)))
        if grid.tune_lr is not None:    # its tuning run: some or all of its points
            tuned = {p.point_id for p in tuning_points(grid.points(), grid.tune_lr)}
            have = done_ids(str(d / TUNING))
            assert have and have <= tuned, d.name
        # of a tuned grid still running: its points at the rates chosen so far, the others at
        # none yet (no stored point is theirs)
        partly = name in SHIPPED_PARTLY
        points = grid_points(grid, str(d), partial=partly)
        ids = [p.point_id for p in points]
        assert len(set(ids)) == len(ids) == grid.n_points, d.name
        # a walked grid's points past settled limits are never trained (memgrid.walk)
        trained = set(ids) - {p.point_id for p in left_out(grid, str(d), points)}
        done = done_ids(str(d))
        assert done < trained if partly else done == trained, d.name


CPU_BOUND = ("lru", "lru_ring", "lru_real", "lru_block", "mamba", "mamba_lin", "mamba_complex",
             "s6_bare", "s6_bare_lin")
"""today_cells' cells whose rows retrain bit for bit only on the kind of CPU that trained them:
an AMD EPYC (Zen 4, AVX-512) trains the LRU's apart from an Intel Xeon with AVX-512 in the last
bits from the first epochs on, and the selective SSMs' stream MC differs in its 6th digit. The
other cells' rows retrain bit for bit on both."""
TRAINED_ON = {"GenuineIntel": ("lru", "lru_real", "s6_bare", "mamba"),
              "AuthenticAMD": ("lru_block", "lru_ring", "s6_bare_lin", "mamba_lin")}
"""which CPU's vendor trained today_cells' rows of each :data:`CPU_BOUND` cell (both with
AVX-512; docs/data/README.md's provenance)"""


def _retrain(name: str, where) -> tuple[int, int]:
    from memgrid.verify import check_results

    threads = torch.get_num_threads()
    try:
        return check_results(str(ROOT / "docs" / "data" / name), 3, seed=7,
                             where=lambda r: r["layers"] * r["cells"] <= 12 and r["epochs"] <= 1000
                             and where(r))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["fig6_rnn-paper", "fig6_slice", "today_cells"])
def test_shipped_points_retrain_to_their_rows(name):
    """A sample of a shipped folder's points, retrained alone by this memgrid, gives back their
    stored rows (epochs, stop reason, losses and r2 bit for bit, the stream MC's float64 fit to
    1e-12) on any x86-64 CPU: what the kernels or the task change must not change them (small
    networks, so that it takes seconds). today_cells trained on the diagonal cells' C kernel;
    its cells that round by CPU (:data:`CPU_BOUND`) are the next test's."""
    assert _retrain(name, lambda r: r["arch"] not in CPU_BOUND) == (3, 0)


def test_every_cpu_bound_cell_shipped_names_the_cpu_that_trained_it():
    """Each :data:`CPU_BOUND` cell that today_cells holds is in :data:`TRAINED_ON` once: a cell
    shipped without its vendor would go unretrained everywhere."""
    stored = set(pd.read_parquet(ROOT / "docs" / "data" / "today_cells" / "points",
                                 columns=["arch"])["arch"])
    named = [a for archs in TRAINED_ON.values() for a in archs]
    assert sorted(named) == sorted(set(named)) and set(named) <= set(CPU_BOUND)
    assert stored & set(CPU_BOUND) == set(named)


@pytest.mark.parametrize("vendor, name", [("GenuineIntel", "today_cells"),
                                          ("GenuineIntel", "mamba_check"),
                                          ("AuthenticAMD", "today_cells")])
def test_rows_that_round_by_cpu_retrain_on_the_kind_of_cpu_that_trained_them(vendor, name):
    """The rows of today_cells' :data:`CPU_BOUND` cells, and mamba_check's (Mamba's block and
    the bare SSM, trained on their definitions under autograd on an Intel Xeon), retrain bit for
    bit on a CPU of the vendor that trained them (:data:`TRAINED_ON`), with AVX-512; elsewhere
    they agree to float rounding only."""
    from memgrid.fast.native import cpu_flags

    info = Path("/proc/cpuinfo")
    if not (info.exists() and vendor in info.read_text() and "avx512f" in cpu_flags()):
        pytest.skip(f"trained on a {vendor} CPU with AVX-512; this CPU rounds them otherwise")
    assert _retrain(name, lambda r: r["arch"] in TRAINED_ON[vendor]) == (3, 0)


def _random_grid(rng: random.Random) -> dict:
    """A grid file's mapping: random axes over most settings, per-arch rates, esn settings."""
    archs = rng.sample(["rnn", "lstm", "gru", "esn"], rng.randint(1, 3))
    axes = {"arch": archs, "layers": [1] if "esn" in archs else rng.sample([1, 2, 3], 2),
            "cells": rng.sample(range(2, 12), 2), "position": f"1..{rng.randint(1, 14)}",
            "seed": rng.sample(range(100), rng.randint(1, 3))}
    choices = {"lr": [0.003, 0.01, 0.1 + 0.2, 1.0], "momentum": [0.0, 0.5, 0.9],
               "batch_size": [32, 128], "tbptt": [0, 4], "readout": ["sum", "linear"],
               "q_min": [4, 10], "q_max": [10, 15], "patience": [0, 250], "plateau": [True, False],
               "solved_loss": [0.01, 1e-3], "plateau_tol": [0.01, 0.02], "max_epochs": [100, 5000],
               "connectivity": [0.3, 1.0], "ridge": [1e-6, 1e-8, 0.5]}
    if "optimizer" in POINT_FIELDS:     # a setting that leaves the id at one of its values
        choices["optimizer"] = ["sgd", "adam"]
    train, task, stop, esn = {}, {}, {}, {}
    sections = {"lr": train, "momentum": train, "batch_size": train, "tbptt": train,
                "readout": train, "max_epochs": train, "optimizer": train, "q_min": task,
                "q_max": task, "patience": stop, "plateau": stop, "solved_loss": stop,
                "plateau_tol": stop, "connectivity": esn, "ridge": esn}
    for k in rng.sample(sorted(choices), rng.randint(2, 6)):
        if rng.random() < 0.5:
            axes[k] = rng.sample(choices[k], 2)
        else:
            sections[k][k] = rng.choice(choices[k])
    if "lr" not in axes and "lr" not in train and rng.random() < 0.7:
        train["lr"] = {a: rng.choice([0.003, 0.01, 0.03]) for a in archs if a != "esn"}
    if "q_min" in axes or "q_max" in axes or task.get("q_min", 10) > task.get("q_max", 15):
        axes.pop("q_min", None), axes.pop("q_max", None), task.clear()
    return {"name": "r", "axes": axes, "train": train, "task": task, "stop": stop, "esn": esn,
            "capacity": {"mc_low": -0.8, "mc_high": 0.8} if rng.random() < 0.3 else {}}


def test_a_grids_ids_are_point_id_computed_at_once():
    """Grid.points computes its points' ids from pieces of JSON; each must be point_id's
    definition, over random grids of every kind of setting (about 10,000 points)."""
    rng = random.Random(12)
    n = 0
    for _ in range(60):
        grid = parse_grid(_random_grid(rng), "r.yaml", rng.choice([None, "paper"]))
        pts = grid.points()
        n += len(pts)
        for p in pts:
            assert p.point_id == reference_id(p) == dataclasses.replace(p).point_id, p
    assert n > 5_000
    # grids made in code: ints where floats belong (json writes 1, not 1.0), -0.0, NaN, a
    # per-arch rate missing for an arch (the default), settings left to the defaults
    odd = [Grid("g", {"arch": ["rnn", "esn"], "layers": [1], "cells": [3], "position": [1, 2],
                      "seed": [0]}, {"lr": {"rnn": 1}, "mc_low": -0.0}),
           Grid("g", {"arch": ["gru"], "layers": [2], "cells": [3], "position": [5], "seed": [7],
                      "momentum": [0, 0.0, -0.0]}, {"solved_loss": math.nan}),
           Grid("g", {"arch": ["lstm"], "layers": [1], "cells": [1], "position": [1],
                      "seed": [0]}, {})]
    for grid in odd:
        for p in grid.points():
            assert p.point_id == reference_id(p), p
    assert len({p.point_id for p in odd[1].points()}) == 3   # 0, 0.0 and -0.0 are 3 settings


# ---------------------------------------------------------------------------------------------
# A pack as its trial gets it.


def test_a_pack_spec_gives_back_the_same_points():
    rng = random.Random(3)
    for _ in range(20):
        grid = parse_grid(_random_grid(rng), "r.yaml")
        for pk in plan_packs(grid.points(), rng.choice(["auto", 3]), 2):
            spec = pack_spec(pk)
            pid, back = spec_points(json.loads(json.dumps(spec)))
            assert back == pk and pid == pack_id(pk) == spec_pack_id(spec)
            assert [p.point_id for p in back] == [p.point_id for p in pk]
            assert [type(getattr(p, k)) for p in back for k in POINT_FIELDS] == \
                [type(getattr(p, k)) for p in pk for k in POINT_FIELDS]


def test_packs_and_their_plan_are_unchanged():
    """Packs of the paper's largest grid: same members, same order, as computed before."""
    packs = plan_packs(_pinned("fig6_rnn").points(), "auto", 2)
    assert len(packs) == 461 and sum(map(len, packs)) == 10_000
    assert Counter(len(pk) for pk in packs).most_common(2) == [(10, 60), (8, 52)]
    ids = ",".join(pack_id(pk) for pk in packs)       # every pack's members, in plan order
    assert hashlib.sha256(ids.encode()).hexdigest()[:16] == "a0aa42396154e76e"


# ---------------------------------------------------------------------------------------------
# The time left on a grid whose packs differ a lot in cost.


def test_time_left_weighs_packs_by_their_cost_not_their_points():
    """Four packs of 4 rnn 1,2 points finish in 1 s each; left: a pack of 8 rnn 5,20 points
    (9.74x the work of a small pack by the cost model) and one more small pack, on 2 slots.
    A count of points would say 1.5 s (12 points at 0.25 s each, over 2 slots); the cost model
    says 9.74 s: the big pack alone takes that."""
    small = [[Point("rnn", 1, 2, 1, 4 * i + s, max_epochs=100) for s in range(4)] for i in range(5)]
    big = [Point("rnn", 5, 20, 1, s, max_epochs=100) for s in range(8)]
    c_small, c_big = pack_cost(small[0]), pack_cost(big)
    # 100 epochs x (ops x 5e-6 s + members x activation bytes / 1.6e9 B/s)
    assert c_small == pytest.approx(100 * ((10 * 15 + 80) * 5e-6 + 4 * 33792 / 1.6e9))
    assert c_big == pytest.approx(100 * ((10 * 15 * 5 + 80) * 5e-6 + 8 * 1574912 / 1.6e9))
    packs = small + [big]
    p = Progress("g", 28, Counter(), packs, slots=2, stream=_Log())
    for i, pk in enumerate(small[:4]):
        p.update(f"t{i}", {"epoch": 100, "attempt_s": 1.0, "active": 0}, pack_id(pk))
        p.finish(f"t{i}")
    rate = 4.0 / (4 * c_small)                     # seconds per unit of modelled work
    assert p.left_s() == pytest.approx(rate * max((c_big + c_small) / 2, c_big))
    assert p.left_s() == pytest.approx(9.74, abs=0.005)
    # the big pack at half its epochs after 6.5 s, with 2 of its 8 members still training
    p.update("b", {"epoch": 50, "attempt_s": 6.5, "active": 2}, pack_id(big))
    rate = (4.0 + 6.5) / (4 * c_small + c_big / 2)
    rest = pack_seconds(big[0], 2) / 2
    assert p.left_s() == pytest.approx(rate * max((rest + c_small) / 2, rest, c_small))


class _Log:
    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> None:
        pass

    def flush(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# What the command line says and counts.


def test_a_large_dry_run_says_what_it_does_first(tmp_path):
    grid = write_grid(tmp_path / "big.yaml", name="big",
                      axes={"arch": ["rnn"], "layers": "1..2", "cells": "1..10",
                            "position": "1..20", "seed": f"0..{NOTICE_POINTS // 400 - 1}"})
    r = memgrid_cli("run", grid, "--dry-run", "--out", tmp_path / "res", "--num-cpus", "2")
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"[big] {NOTICE_POINTS} points: expanding the grid, planning its packs ...\n"
    assert r.stdout.splitlines()[1] == (f"  points: {NOTICE_POINTS}; stored in {tmp_path / 'res'}: "
                                        f"0; to train: {NOTICE_POINTS}")
    small = write_grid(tmp_path / "small.yaml", name="small",
                       axes={"arch": ["rnn"], "layers": [1], "cells": [2], "position": [1],
                             "seed": [0]})
    r = memgrid_cli("run", small, "--dry-run", "--out", tmp_path / "res2")
    assert r.returncode == 0 and r.stderr == ""


def test_an_interrupted_tuned_grid_counts_its_measured_points(tmp_path):
    """The line after Ctrl-C counts a tuned grid's points at the rates its tuning chose (the
    grid's own points, at the protocol's rate, are never stored)."""
    out = tmp_path / "tuned"
    shutil.copytree(ROOT / "docs" / "data" / "tuned_lr_check", out)
    assert (out / TUNING).is_dir()
    code = ("import sys\n"
            "from memgrid import cli\n"
            "from memgrid.results import read_grid_identity\n"
            "from memgrid.grid_file import grid_from_identity\n"
            f"out = {str(out)!r}\n"
            "grid = grid_from_identity(read_grid_identity(out))\n"
            "def run():\n"
            "    cli._RUNNING.update(grid=grid, out=out)\n"
            "    raise KeyboardInterrupt\n"
            "cli._ends_cleanly(run)()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 130, r.stderr
    assert r.stderr == (f"memgrid: interrupted: {out}: 120/120 points stored; run the same "
                        "command again to finish\n")


def test_benchmark_header_names_the_core_generation():
    """A virtual machine's model name is often only "AMD EPYC": the header adds the generation
    from cpu family and flags (without it a Zen 5 reads as a Zen 4)."""
    from memgrid.fast.native import cpu_text

    def info(vendor, family, model, flags):
        return (f"processor : 0\nvendor_id : {vendor}\ncpu family : {family}\nmodel : {model}\n"
                f"model name : AMD EPYC\nflags : fpu {flags}\nprocessor : 1\ncpu family : 99\n")

    assert cpu_text(info("AuthenticAMD", 26, 2, "avx2 avx512f")) == \
        "AMD EPYC (Zen 5: cpu family 26, model 2; AVX-512)"
    assert cpu_text(info("AuthenticAMD", 25, 17, "avx2 avx512f")).startswith("AMD EPYC (Zen 4:")
    assert cpu_text(info("AuthenticAMD", 25, 1, "avx2")).startswith("AMD EPYC (Zen 3:")
    assert cpu_text(info("AuthenticAMD", 23, 1, "avx2")) == \
        "AMD EPYC (Zen 1/Zen 2: cpu family 23, model 1; AVX2)"
    assert cpu_text(info("GenuineIntel", 6, 143, "sse2")) == \
        "AMD EPYC (cpu family 6, model 143; no AVX2)"
    assert cpu_text("") == "unknown CPU"


SHIPPED_CURVES = ["fig4_rnn", "fig4_rnn-paper", "fig5_lstm", "fig5_lstm-paper",
                  "big_stack_check-noplateau", "mamba_check", "mamba_budget_check-2x", "lru_check",
                  "today_cells", "today_cells_budget_check-2x", "today_cells_lru_budget_check-2x",
                  "today_cells_ssm_budget_check-2x", "today_cells_mamba_budget_check-2x",
                  "today_cells_block_budget_check-2x", "today_cells_rate_edge_check"]
"""docs/data's folders that ship their curves (the loss-curve figures, Figures 4 and 5, the
plateau stop's replay, and the newer cells' checks, whose curves show whether they converged)"""


def test_the_shipped_curves_are_their_points_curves():
    """Every point of a folder that ships curves has its curve, evaluated from epoch 0 to the
    epoch it stopped at, and no curve belongs to another point."""
    from memgrid.analysis import load_curves, load_points

    for name in SHIPPED_CURVES:
        d = str(ROOT / "docs" / "data" / name)
        points, curves = load_points(d), load_curves(d)
        assert set(curves["point_id"]) == set(points["point_id"]), name
        span = curves.groupby("point_id")["epoch"].agg(["min", "max"])
        stopped = points.set_index("point_id")["epochs"]
        assert (span["min"] == 0).all(), name
        assert (span["max"] == stopped.reindex(span.index)).all(), name
    have = {p.parent.name for p in (ROOT / "docs" / "data").glob("*/curves")}
    assert have == set(SHIPPED_CURVES)
