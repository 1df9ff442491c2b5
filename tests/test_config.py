"""Grid files: strict loading, expansion, smoke shrink; bad input on the command line."""

import pytest
import yaml

from memgrid.config import ConfigError, Point
from memgrid.grid_file import load_grid, parse_grid

from .conftest import CONFIGS, memgrid_cli

GOOD = {"name": "g", "axes": {"arch": ["rnn"], "layers": [1], "cells": [5], "position": "1..3", "seed": "0..1"}}


def with_(**changes):
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    for dotted, value in changes.items():
        node = raw
        *path, last = dotted.split("__")
        for k in path:
            node = node.setdefault(k, {})
        node[last] = value
    return raw


def test_expansion_and_ranges():
    g = parse_grid(with_(axes__lr=[0.01, 0.1]), "g.yaml")
    pts = g.points()
    assert len(pts) == 3 * 2 * 2
    assert {p.position for p in pts} == {1, 2, 3} and {p.lr for p in pts} == {0.01, 0.1}
    assert len({p.point_id for p in pts}) == 12
    assert len({p.pack_key for p in pts}) == 1      # position, seed, lr may share a pack


def test_max_position_trains_positions_up_to_a_multiple_of_the_units():
    """`max_position: 2N`: each network trains the positions p <= 2N of the axis, N its units
    (c l for the RNN, 2 c l for the LRU); the grid counts, tunes and records the same points."""
    from memgrid.config import units
    from memgrid.grid_file import grid_from_identity
    from memgrid.lr_tuning import tuning_points

    axes = {"arch": ["rnn", "lru"], "layers": [1, 2], "cells": [1, 3], "position": "1..9",
            "seed": [0, 1]}
    g = parse_grid({"name": "g", "axes": axes, "max_position": "2N",
                    "tune_lr": {"positions": [2, 4, 9]}})
    pts = g.points()
    want = {(a, l, c): [p for p in range(1, 10) if p <= 2 * units(a, l, c)]
            for a in ("rnn", "lru") for l in (1, 2) for c in (1, 3)}
    assert want[("rnn", 1, 1)] == [1, 2] and want[("lru", 1, 3)] == list(range(1, 10))
    for key, ps in want.items():
        got = sorted({p.position for p in pts if (p.arch, p.layers, p.cells) == key})
        assert got == ps, key
    assert g.n_points == len(pts) == 2 * sum(map(len, want.values()))
    assert {p.position for p in tuning_points(pts, g.tune_lr) if p.arch == "rnn"
            and p.cells == 1 and p.layers == 1} == {2}
    assert g.identity["max_position"] == "2N"
    again = grid_from_identity(g.identity)
    assert again.max_position == 2 and [p.point_id for p in again.points()] == [
        p.point_id for p in pts]
    assert "max_position" not in parse_grid({"name": "g", "axes": axes}).identity


def test_point_id_is_stable():
    """The id keys results across runs: changing it orphans every stored point."""
    assert Point("rnn", 1, 5, 3, 0).point_id == Point("rnn", 1, 5, 3, 0).point_id
    assert Point("rnn", 1, 5, 3, 0).point_id != Point("rnn", 1, 5, 3, 1).point_id
    assert len(Point("rnn", 1, 5, 3, 0).point_id) == 16


def test_a_setting_added_later_leaves_older_ids_alone():
    """`optimizer` and `lr_schedule` came after points were stored: at `sgd` and `constant`,
    every older point keeps its id (the values were computed by memgrid before the settings
    existed); at `adam` or `cosine` the id differs."""
    assert Point("rnn", 1, 5, 3, 0, lr=0.03).point_id == "bdcea6d37dc93855"
    assert Point("lstm", 2, 10, 7, 4, lr=0.03).point_id == "162e5bac1b810071"
    adam = Point("rnn", 1, 5, 3, 0, lr=0.03, optimizer="adam")
    assert adam.point_id != "bdcea6d37dc93855"
    assert adam.pack_key != Point("rnn", 1, 5, 3, 0, lr=0.03).pack_key   # not in one pack
    cosine = Point("rnn", 1, 5, 3, 0, lr=0.03, lr_schedule="cosine")
    assert len({cosine.point_id, adam.point_id, "bdcea6d37dc93855"}) == 3
    assert cosine.pack_key != Point("rnn", 1, 5, 3, 0, lr=0.03).pack_key


def test_a_folder_written_before_a_setting_existed_is_still_its_grids(tmp_path):
    """docs/data/fig4_rnn-paper was written before `optimizer` existed: the same grid at the
    same protocol finds its grid.json its own and every point stored (nothing to train)."""
    import shutil

    from .conftest import ROOT

    out = tmp_path / "fig4"
    shutil.copytree(ROOT / "docs/data/fig4_rnn-paper", out)
    r = memgrid_cli("run", CONFIGS / "fig4_rnn.yaml", "--protocol", "paper", "--out", out, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "stored in" in r.stdout and "to train: 0" in r.stdout


def test_a_part_written_before_a_setting_existed_reads_as_its_old_value(tmp_path):
    """A points part without the `optimizer` and `lr_schedule` columns (memgrid before them)
    reads as `sgd` and `constant` beside a part that has them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from memgrid.results import ADDED_IN, POINT_SCHEMA, read_points
    from memgrid.rows import point_row

    (tmp_path / "points").mkdir()
    for name, p in [("old", Point("rnn", 1, 5, 3, 0)), ("new", Point("rnn", 1, 5, 3, 1, optimizer="adam",
                                                                   lr_schedule="cosine"))]:
        row = point_row(p, "g", epochs=10, stop_reason="max_epochs", loss=0.2, best_loss=0.2,
                        r2=0.1, wall_s=1.0, pack_id="pack-x", device="cpu")
        table = pa.Table.from_pylist([row], schema=POINT_SCHEMA)
        if name == "old":       # a part of schema version 1: none recorded, none added since
            table = table.drop(list(ADDED_IN["points"]))   # optimizer, lr_schedule, ...
            table = table.replace_schema_metadata(None)
        pq.write_table(table, tmp_path / "points" / f"{name}.parquet")
    got = read_points(str(tmp_path)).to_pandas().set_index("seed")[["optimizer", "lr_schedule"]]
    assert got.to_dict("index") == {0: {"optimizer": "sgd", "lr_schedule": "constant"},
                                    1: {"optimizer": "adam", "lr_schedule": "cosine"}}


def test_parts_carry_the_schema_version(tmp_path):
    """A part written now records SCHEMA_VERSION in its metadata; the shipped parts written
    before it existed read as version 1, and both read together."""
    import shutil

    import pyarrow.parquet as pq

    from memgrid.results import SCHEMA_VERSION, read_points, schema_version, write_points
    from memgrid.train import train_points

    from .conftest import ROOT

    out = tmp_path / "f"
    shutil.copytree(ROOT / "docs/data/fig4_rnn-paper", out)
    (old,) = (out / "points").iterdir()
    assert schema_version(pq.read_schema(old)) == 1
    p = Point("rnn", 1, 2, 1, 99, max_epochs=20, eval_every=10, eval_size=32, mc_length=0)
    write_points(str(out), "new", *train_points([p]))
    assert SCHEMA_VERSION >= 2
    assert schema_version(pq.read_schema(out / "points" / "new.parquet")) == SCHEMA_VERSION
    assert schema_version(pq.read_schema(out / "curves" / "new.parquet")) == SCHEMA_VERSION
    assert read_points(str(out)).num_rows == 101


BAD = [
    (with_(axes__cells=[0]), "axes.cells"),
    (with_(axes__position=[0, 1]), "axes.position"),
    (with_(axes__arch=["transformer"]), "axes.arch"),
    (with_(axes__layers=["two"]), "axes.layers"),
    (with_(axes__seed="5..1"), "axes.seed"),
    (with_(task__q_min=12, task__q_max=10), "task.q_min"),
    (with_(train__lr=0), "train.lr"),
    (with_(train__lr=-0.1), "train.lr"),
    (with_(train__batch_size=1.5), "train.batch_size"),
    (with_(train__momentum=1.0), "train.momentum"),
    (with_(train__optimizer="rmsprop"), "train.optimizer"),
    (with_(train__lr_schedule="step"), "train.lr_schedule"),
    (with_(train__learning_rate=0.1), "train.learning_rate"),
    (with_(stop__plateau="yes"), "stop.plateau"),
    (with_(extra=1), "extra"),
    (with_(axes__colour=[1]), "axes.colour"),
    (with_(resources__pack=0), "resources.pack"),
    (with_(resources__gpus_per_trial=-1), "resources.gpus_per_trial"),
    (with_(task__long_positions="error", axes__position=[1, 12]), "axes.position"),
    (with_(task__long_positions="wrap"), "task.long_positions"),
    (with_(max_position="2"), "max_position"),
    (with_(max_position="0N"), "max_position"),
    (with_(max_position=2), "max_position"),
    (with_(max_position="1N", axes__position=[11, 12]), "max_position"),
    ({"name": "g", "axes": {"arch": ["rnn"], "layers": [1], "cells": [5], "position": [1]}}, "axes.seed"),
]


@pytest.mark.parametrize("raw,key", BAD, ids=[k for _, k in BAD])
def test_bad_values_name_file_and_key(raw, key):
    with pytest.raises(ConfigError) as e:
        parse_grid(raw, "grids/bad.yaml")
    msg = str(e.value)
    assert msg.startswith("grids/bad.yaml: ") and key in msg and "\n" not in msg


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_grid(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("axes: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML at line"):
        load_grid(tmp_path / "broken.yaml")


def test_shipped_grids_load_and_say_how_to_run():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert {f.stem for f in files} >= {"smoke"}
    for f in files:
        grid = load_grid(f)
        first = f.read_text().splitlines()[0]
        # the command that runs it: this file, and the flags it needs, if any
        assert first.split()[:4] == ["#", "memgrid", "run", f"tune_configs/{f.name}"], f
        rest = first.split()[4:]            # flags, each with its value if it takes one
        assert all(w.startswith("--") or (i and rest[i - 1].startswith("--"))
                   for i, w in enumerate(rest)), f
        assert grid.points()
        small = grid.smoke()
        assert len(small.points()) <= 64 and all(p.max_epochs <= 200 for p in small.points())


@pytest.mark.parametrize("raw,key", [BAD[0], BAD[6], BAD[12]], ids=["cells", "lr", "unknown"])
def test_cli_bad_grid_exits_2_with_one_line_and_writes_nothing(tmp_path, raw, key):
    grid = tmp_path / "bad.yaml"
    grid.write_text(yaml.safe_dump(raw))
    out = tmp_path / "results"
    r = memgrid_cli("run", grid, "--out", out)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(grid) in lines[0] and key in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_cli_bad_flags_and_missing_file(tmp_path):
    out = tmp_path / "results"
    r = memgrid_cli("run", tmp_path / "missing.yaml", "--out", out)
    assert r.returncode == 2 and "missing.yaml: cannot read" in r.stderr and not out.exists()
    r = memgrid_cli("run", CONFIGS / "smoke.yaml", "--out", out, "--pack", "zero")
    assert r.returncode == 2 and "command line: --pack" in r.stderr and not out.exists()
    r = memgrid_cli("run", CONFIGS / "smoke.yaml", "--out", out, "--max-epochs", "0")
    assert r.returncode == 2 and "--max-epochs" in r.stderr and not out.exists()


def test_cli_refuses_a_folder_of_another_grid(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "grid.json").write_text('{"name": "other", "axes": {}, "fixed": {}}')
    r = memgrid_cli("run", CONFIGS / "smoke.yaml", "--out", out)
    assert r.returncode == 2 and "grid.json" in r.stderr and "another grid" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["grid.json"]


def test_stop_settings_may_be_axes_and_share_a_pack():
    g = parse_grid(with_(axes__patience=[100, 300], axes__plateau=[True, False]), "g.yaml")
    pts = g.points()
    assert len(pts) == 3 * 2 * 2 * 2 and {p.patience for p in pts} == {100, 300}
    assert len({p.point_id for p in pts}) == len(pts)
    assert len({p.pack_key for p in pts}) == 1                 # checked per member (train.py)
    from memgrid.packs import plan_packs
    assert len(plan_packs(pts, "auto", 1)) == 1
    assert {p.patience for p in g.smoke().points()} == {100}   # --smoke still shortens it
    with pytest.raises(ConfigError, match=r"^g.yaml: axes.patience: must be >= 0"):
        parse_grid(with_(axes__patience=[100, -1]), "g.yaml")
    with pytest.raises(ConfigError, match=r"^g.yaml: stop.patience: also given as an axis"):
        parse_grid(with_(axes__patience=[100], stop__patience=5), "g.yaml")
