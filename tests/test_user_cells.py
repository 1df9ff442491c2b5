"""Cells of the user's own (memgrid.user_cells): loaded by path, checked before anything runs,
and a cell written for one network lifted to memgrid's packed layout."""

import json
import textwrap

import pytest
import torch

from memgrid.cells import CELLS, affine
from memgrid.config import Point
from memgrid.models import init_params, reference_forward
from memgrid.task import TRAIN, TaskSpec, make_batch
from memgrid.train import PackTrainer
from memgrid.user_cells import CellError, check, load, locate, single_network


@pytest.fixture
def fresh_cells():
    """CELLS as it was: the tests' cells do not outlive them."""
    before = dict(CELLS)
    from memgrid import user_cells
    sources = dict(user_cells._SOURCES)
    yield
    CELLS.clear()
    CELLS.update(before)
    user_cells._SOURCES.clear()
    user_cells._SOURCES.update(sources)


def _gru1_weights(m, c):
    return {"w_z": (c, m + c), "b_z": (c,), "w_h": (c, m + c), "b_h": (c,)}


def _gru1_one(w, x, state):
    """One network: x `(m, B)`, h `(c, B)`."""
    (h,) = state
    xh = torch.cat([x, h])
    z = torch.sigmoid(w["w_z"] @ xh + w["b_z"][:, None])
    h = (1 - z) * h + z * torch.tanh(w["w_h"] @ xh + w["b_h"][:, None])
    return h, (h,)


def _gru1_packed(w, x, state):
    """The same unit written by hand for K networks: x `(K, m, B)`, h `(K, c, B)`."""
    (h,) = state
    xh = torch.cat([x, h], 1)
    z = torch.sigmoid(affine(w["w_z"], w["b_z"], xh))
    h = (1 - z) * h + z * torch.tanh(affine(w["w_h"], w["b_h"], xh))
    return h, (h,)


def test_single_network_lift_is_the_packed_cell(fresh_cells):
    """A step written for one network, lifted with vmap, computes what the same unit written
    for the packed layout computes: outputs and gradients of a 2-layer pack of 3 (float64)."""
    from memgrid.cells import Cell

    CELLS["one"] = single_network("one", _gru1_weights, _gru1_one)
    CELLS["hand"] = Cell("hand", _gru1_weights, _gru1_packed)
    spec = TaskSpec.of([Point("one", 2, 4, 2, s, q_min=5, q_max=8) for s in range(3)])
    b = make_batch(spec, TRAIN, 0, 16)
    runs = []
    for arch in ("one", "hand"):
        params = {n: v.double().requires_grad_() for n, v in
                  init_params(arch, 2, 4, "sum", spec.seed).items()}
        y = reference_forward(arch, params, b.x.double(), b.mask)
        y.pow(2).sum().backward()
        runs.append((y.detach(), {n: v.grad for n, v in params.items()}))
    torch.testing.assert_close(runs[0][0], runs[1][0], atol=1e-12, rtol=1e-12)
    for n in runs[1][1]:
        torch.testing.assert_close(runs[0][1][n], runs[1][1][n], atol=1e-12, rtol=1e-12)


def test_single_network_lift_is_pack_invariant(fresh_cells):
    """The lifted cell trains a point alone and inside a pack of other positions, seeds and
    rates to the same weights, bit for bit."""
    CELLS["one"] = single_network("one", _gru1_weights, _gru1_one)
    kw = dict(max_epochs=30, eval_every=10, eval_size=64, q_min=3, q_max=5, batch_size=32,
              plateau=False, mc_length=0)
    alone = Point("one", 2, 4, 1, 5, lr=0.03, **kw)
    others = [Point("one", 2, 4, p, s, lr=lr, **kw) for p, s, lr in [(9, 1, 0.1), (4, 2, 0.01)]]
    weights = []
    for group in ([*others, alone], [alone]):
        tr = PackTrainer(group)
        tr.run()
        weights.append(next(f for f in tr.finished if f[0]["seed"] == 5)[2])
    for n in weights[1]:
        assert torch.equal(weights[0][n], weights[1][n]), n


def _write(tmp_path, body, name="cell.py"):
    f = tmp_path / name
    f.write_text(textwrap.dedent(body))
    return f


GOOD = """
    import torch
    from memgrid import Cell

    def step(w, x, state):
        (h,) = state
        h = torch.tanh(torch.baddbmm(w["b"][:, :, None], w["w_ih"], x) + torch.bmm(w["w_hh"], h))
        return h, (h,)

    CELL = Cell("mine", lambda m, c: {"w_ih": (c, m), "w_hh": (c, c), "b": (c,)}, step)
"""


def test_a_cell_by_path_loads_registers_and_records_its_source(tmp_path, fresh_cells):
    f = _write(tmp_path, GOOD)
    src = locate("cell.py:CELL", tmp_path)
    cell = load(src)
    assert CELLS["mine"] is cell and src.origin == str(f)
    import hashlib
    assert src.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    assert src.text == f"{f}:CELL sha256:{src.sha256}"
    check(cell, [(1, 3), (2, 5)], src.spec)
    assert Point("mine", 2, 3, 1, 0).params == (3 + 9 + 3) + (9 + 9 + 3)
    assert load(locate("cell.py:CELL", tmp_path)) is cell          # the same source: a no-op


@pytest.mark.parametrize("body,spec,says", [
    (GOOD, "nofile.py:CELL", "no file"),
    (GOOD, "cell.py:OTHER", "has no OTHER"),
    ("X = 3\n", "cell.py:X", "X is a int, not a memgrid.Cell"),
    ("def f(:\n", "cell.py:X", "failed (line 1): SyntaxError"),
    ("raise RuntimeError('boom')\n", "cell.py:X", "RuntimeError: boom"),
    (GOOD.replace('"mine"', '"rnn"'), "cell.py:CELL", "'rnn' is taken by a built-in cell"),
    (GOOD.replace('"mine"', '"My Cell"'), "cell.py:CELL", "is not lower-case"),
    (GOOD.replace('step)', 'step, label="a | b")'), "cell.py:CELL",
     "its label 'a | b' is not one printable line of 1 to 60 characters without | $"),
    (GOOD.replace('step)', 'step, label="two\\nlines")'), "cell.py:CELL", "its label 'two\\nlines' is not"),
    (GOOD.replace('step)', 'step, label="$x^2$")'), "cell.py:CELL", "its label '$x^2$' is not"),
    (GOOD.replace("return h, (h,)", "return h[:, :1], (h,)"), "cell.py:CELL",
     "gave out of shape (2, 1, 3), not (K, c, B) = (2, 3, 3)"),
    (GOOD.replace("return h, (h,)", "return h, (h, h)"), "cell.py:CELL", "gave states"),
    (GOOD.replace('step)', 'step, units=lambda c: 2 * c)'), "cell.py:CELL", "read gave"),
    (GOOD.replace('step)', 'step, init=lambda *a: a[4](1))'), "cell.py:CELL", "its init raised RuntimeError: shape '[2, 3, 1]' is invalid"),
])
def test_a_broken_cell_is_one_line_naming_file_and_name(tmp_path, fresh_cells, body, spec, says):
    _write(tmp_path, body)
    with pytest.raises(CellError) as e:
        check(load(locate(spec, tmp_path)), [(1, 3), (2, 3)], spec)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(spec) and says in msg, msg


def test_a_hand_edited_label_in_grid_json_is_passed_over(monkeypatch):
    """A results folder's recorded labels name users' cells in its analysis; one that no cell
    could carry (a `|` would split the report's table row) falls back to the arch."""
    from types import SimpleNamespace

    from memgrid.analysis import tables
    from memgrid.user_cells import CellSource

    monkeypatch.setattr(tables, "RECORDED_LABELS", {})
    src = lambda name, label: CellSource(f"c.py:{name.upper()}", "/c.py", name.upper(), "0" * 64,
                                         "", name, label)
    tables.remember_labels(SimpleNamespace(user_cells=[src("good", "My cell (v2)"),
                                                       src("bad", "a | b"), src("odd", "x\ny")]))
    assert [tables.arch_label(a) for a in ("good", "bad", "odd")] == ["My cell (v2)", "bad", "odd"]


# ---------------------------------------------------------------------------------------------
# Through the command line, as a user would: a cell in a file outside the repository, named by
# a path relative to the grid file.

import subprocess  # noqa: E402
import sys  # noqa: E402

import pandas as pd  # noqa: E402

from .conftest import write_grid  # noqa: E402

TANH_CELL = GOOD.replace('"mine"', '"my_tanh"')


def _memgrid(*args, cwd):
    return subprocess.run([sys.executable, "-m", "memgrid", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _own_grid(tmp_path, spec, **train):
    (tmp_path / "grids").mkdir(exist_ok=True)
    return write_grid(tmp_path / "grids" / "own.yaml", name="own",
                      axes={"arch": [spec, "rnn"], "layers": [1], "cells": [3], "position": "1..2",
                            "seed": "0..1"},
                      train={"max_epochs": 300, "eval_every": 25, "eval_size": 256,
                             "readout": "linear", **train})


@pytest.mark.slow
def test_a_users_cell_runs_analyses_and_refuses_a_changed_file(tmp_path):
    """`memgrid run` trains a cell named by path beside a built-in one on the embedded Ray
    (each point stored once, p = 1 learned, its rows naming where the cell came from), `status`
    and `analyze` read the folder without the cell's file, and once the file changes a rerun
    into the folder is refused in one line, exit 2, nothing written."""
    (tmp_path / "cells").mkdir()
    cell_file = tmp_path / "cells" / "tanh_cell.py"
    cell_file.write_text(textwrap.dedent(TANH_CELL))
    grid = _own_grid(tmp_path, "../cells/tanh_cell.py:CELL")
    out, elsewhere = tmp_path / "res", tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = _memgrid("run", grid, "--out", out, cwd=elsewhere)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "8/8 points stored (8 trained now, 0 before)" in r.stdout
    pts = pd.read_parquet(out / "points")
    assert pts["point_id"].is_unique and len(pts) == 8
    mine = pts[pts["arch"] == "my_tanh"]
    import hashlib
    sha = hashlib.sha256(cell_file.read_bytes()).hexdigest()
    assert len(mine) == 4 and (mine["cell_source"] == f"{cell_file}:CELL sha256:{sha}").all()
    assert pts[pts["arch"] == "rnn"]["cell_source"].isna().all()
    assert (mine[mine["position"] == 1]["loss"] < 0.05).all()
    assert (mine["params"] == 3 + 9 + 3 + 3 + 1).all() and (mine["units"] == 3).all()
    cell_file.rename(tmp_path / "gone.py")            # status and analyze run nobody's file
    s = _memgrid("status", out, cwd=elsewhere)
    assert s.returncode == 0 and "8/8 points done" in s.stdout, s.stdout + s.stderr
    a = _memgrid("analyze", out, "--out", tmp_path / "report", cwd=elsewhere)
    assert a.returncode == 0 and (tmp_path / "report" / "limits.csv").exists(), a.stderr
    limits = pd.read_csv(tmp_path / "report" / "limits.csv")
    assert set(limits["arch"]) == {"my_tanh", "rnn"}
    # the report names the cell by its label (the Cell's default: its name in capitals), which
    # the folder's grid.json records
    recorded = json.loads((out / "grid.json").read_text())["cells"]["my_tanh"]
    assert recorded["label"] == "MY_TANH"
    report = (tmp_path / "report" / "report.md").read_text()
    assert "- **MY_TANH**: the limit" in report and "- **RNN**: the limit" in report
    (tmp_path / "gone.py").rename(cell_file)
    cell_file.write_text(cell_file.read_text() + "\n# tuned\n")
    before = sorted(p.name for p in (out / "points").iterdir())
    r = _memgrid("run", grid, "--out", out, cwd=elsewhere)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "cells.my_tanh:" in r.stderr and "is not the text its stored points were trained" \
        in r.stderr, r.stderr
    assert sorted(p.name for p in (out / "points").iterdir()) == before


@pytest.mark.parametrize("body,spec,says", [
    (TANH_CELL, "../cells/none.py:CELL", "no file"),
    ("X = 1\n", "../cells/c.py:X", "X is a int, not a memgrid.Cell"),
    (TANH_CELL.replace("return h, (h,)", "return h[:, :1], (h,)"), "../cells/c.py:CELL",
     "gave out of shape"),
    (TANH_CELL, "../cells/c.py:OTHER", "has no OTHER"),
])
def test_a_broken_cell_in_a_grid_is_refused_before_anything_starts(tmp_path, body, spec, says):
    """One line naming the grid file, the cell's file and name, exit 2, no results folder."""
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "c.py").write_text(textwrap.dedent(body))
    grid = _own_grid(tmp_path, spec)
    r = _memgrid("run", grid, "--out", tmp_path / "res", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"memgrid: error: {grid}: axes.arch: {spec}") and says in r.stderr, \
        r.stderr
    assert not (tmp_path / "res").exists()


def test_memgrid_cells_lists_built_in_and_a_grids_own(tmp_path, fresh_cells):
    """`memgrid cells GRID --layers 2 --cells 5`: every built-in cell and the grid's own, with
    N, the parameter count (closed forms) and the code path, one row each."""
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "c.py").write_text(textwrap.dedent(TANH_CELL))
    grid = _own_grid(tmp_path, "../cells/c.py:CELL")
    r = _memgrid("cells", grid, "--layers", "2", "--cells", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    from memgrid.user_cells import source_of

    assert set(rows) == {n for n in CELLS if source_of(n) is None} | {"my_tanh"}
    assert rows["my_tanh"][-1] == "../cells/c.py:CELL" and rows["rnn"][-1] == "memgrid"
    mine = r.stdout.splitlines()[-1]
    assert " 10 " in mine and f" {(5 + 25 + 5) + (25 + 25 + 5)} " in mine       # N = c l; params
    assert " 70 " in [line for line in r.stdout.splitlines() if line.startswith("mamba ")][0]   # 7 c l
