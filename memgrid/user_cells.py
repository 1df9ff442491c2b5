"""Cells of the user's own, measured without editing memgrid.

A grid's `arch` axis may name, beside the built-in cells, ``"path/to/file.py:NAME"`` (relative to
the grid file) or ``"package.module:NAME"``, where NAME is a :class:`memgrid.Cell`. memgrid
loads it, checks it on the grid's sizes before anything starts, and registers it under its own
:attr:`Cell.name`, which is what the points table stores in `arch`; where it came from goes in
the column `cell_source` (:attr:`CellSource.text`), with the SHA-256 of the file's text, so that
a folder whose points were trained on another version of the file is refused.

Ray's workers get the file's text with the trial and load it the same way (:func:`ensure`): a
node that never saw the file trains it.

A cell written for one network (parameters, x `(m, B)`, state of `(rows, B)`) is lifted to
memgrid's packed layout by :func:`single_network`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import math
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .cells import CELLS, Cell, Shapes, uniform_init

_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_LABEL_ODD = re.compile(r"[|$\\`<>]")


def label_problem(label: Any) -> str | None:
    """Why `label` cannot name a cell in the reports' tables and the figures (a table cell of
    Markdown, a matplotlib text), or None: one printable line of up to 60 characters, none of
    ``| $ \\ ` < >``."""
    if not isinstance(label, str):
        return f"is a {type(label).__name__}, not a str"
    if not 0 < len(label) <= 60 or not label.isprintable() or _LABEL_ODD.search(label):
        return "is not one printable line of 1 to 60 characters without | $ \\ ` < >"
    return None


class CellError(ValueError):
    """A user's cell memgrid cannot measure. One line: which file and name, and why."""


@dataclass(frozen=True)
class CellSource:
    """Where a user's cell comes from."""

    spec: str
    """the `arch` value as the grid gives it: ``path/to/file.py:NAME`` or ``module:NAME``"""
    origin: str
    """the file's absolute path, or the module's name"""
    attr: str
    """NAME: the Cell's variable in that file or module"""
    sha256: str
    """SHA-256 of the file's text (a module: of its file's)"""
    code: str
    """the file's text"""
    name: str = ""
    """the Cell's own name (its `arch`), once loaded"""
    label: str = ""
    """the Cell's label, once loaded: how figures and tables name it"""

    def identity(self) -> dict:
        """What a results folder's grid.json records of it (the code stays in the file; the
        label, where known, names the cell in the folder's analysis, which runs no file)."""
        return {"spec": self.spec, "origin": self.origin, "attr": self.attr, "sha256": self.sha256,
                **({"label": self.label} if self.label else {})}

    def to_dict(self) -> dict:
        """Everything, the code included: what a trial carries to a worker (:func:`from_dict`)."""
        return {**self.identity(), "code": self.code, "name": self.name}

    @staticmethod
    def from_dict(d: dict) -> "CellSource":
        return CellSource(d["spec"], d["origin"], d["attr"], d["sha256"], d["code"], d["name"],
                          d.get("label", ""))

    @property
    def text(self) -> str:
        """What the points table's `cell_source` column holds: origin, NAME and hash."""
        return f"{self.origin}:{self.attr} sha256:{self.sha256}"


def is_import_path(arch: str) -> bool:
    """True where an `arch` names a cell by import path (it holds a ':')."""
    return isinstance(arch, str) and ":" in arch


def _read(path: Path, spec: str) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CellError(f"{spec}: no file {path}") from None
    except OSError as e:
        raise CellError(f"{spec}: cannot read {path} ({e.strerror or e})") from None
    if len(data) > 1 << 20:
        raise CellError(f"{spec}: {path} is over 1 MB; a cell's file is a few hundred lines")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CellError(f"{spec}: {path} is not UTF-8 text") from None


def _exec(code: str, origin: str, spec: str) -> types.ModuleType:
    """The module that running `code` makes, under a name of its hash (a fresh one per text)."""
    digest = hashlib.sha256(code.encode()).hexdigest()
    name = f"memgrid_user_cell_{digest[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    mod = types.ModuleType(name)
    mod.__file__ = origin
    sys.modules[name] = mod           # dataclasses and pickling look a module up by name
    try:
        exec(compile(code, origin, "exec"), mod.__dict__)
    except BaseException as e:        # the user's code: one line whatever it raises
        del sys.modules[name]
        if isinstance(e, KeyboardInterrupt):
            raise
        where = ""
        if isinstance(e, SyntaxError):
            where = f" (line {e.lineno})"
        raise CellError(f"{spec}: importing {origin} failed{where}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")) from None
    return mod


def locate(spec: str, base_dir: str | Path = ".") -> CellSource:
    """The source of ``file.py:NAME`` (relative to `base_dir`, the grid file's folder) or
    ``module:NAME``, read but not run."""
    where, _, attr = spec.rpartition(":")
    if not where or not attr.isidentifier():
        raise CellError(f"{spec}: an arch by import path is 'path/to/file.py:NAME' or "
                        "'package.module:NAME'")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = (Path(base_dir) / where).resolve()
        code = _read(path, spec)
        origin = str(path)
    else:
        try:
            found = importlib.util.find_spec(where)
        except (ImportError, ValueError) as e:
            raise CellError(f"{spec}: cannot import module {where} ({e})") from None
        if found is None or not found.origin or not found.origin.endswith(".py"):
            raise CellError(f"{spec}: no module {where} (a Python file on sys.path)")
        code = _read(Path(found.origin), spec)
        origin = where
    return CellSource(spec, origin, attr, hashlib.sha256(code.encode()).hexdigest(), code)


def load(source: CellSource) -> Cell:
    """Run the source's code and take its Cell; registered in :data:`memgrid.cells.CELLS`
    under its name (the same source again is a no-op). A file's text runs as a module of its
    own; a module is imported where this process can, else its text runs as a file's (a
    worker on a node that does not have it)."""
    mod = None
    if not source.origin.endswith(".py"):
        try:
            mod = importlib.import_module(source.origin)
        except ModuleNotFoundError as e:
            if e.name != source.origin:
                raise CellError(f"{source.spec}: importing {source.origin} failed: {e}") from None
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            raise CellError(f"{source.spec}: importing {source.origin} failed: "
                            f"{type(e).__name__}: {e}") from None
    if mod is None:
        mod = _exec(source.code, source.origin, source.spec)
    if not hasattr(mod, source.attr):
        raise CellError(f"{source.spec}: {source.origin} has no {source.attr}")
    cell = getattr(mod, source.attr)
    if not isinstance(cell, Cell):
        raise CellError(f"{source.spec}: {source.attr} is a {type(cell).__name__}, not a "
                        "memgrid.Cell")
    if not isinstance(cell.name, str) or not _NAME.fullmatch(cell.name):
        raise CellError(f"{source.spec}: its name {cell.name!r} is not lower-case letters, "
                        "digits and '_' (up to 40, a letter first): it is the points' arch")
    why = label_problem(cell.label)
    if why:
        raise CellError(f"{source.spec}: its label {cell.label!r} {why}: it names the cell in "
                        "tables and figures")
    return register(cell, source)


_SOURCES: dict[str, CellSource] = {}


def register(cell: Cell, source: CellSource) -> Cell:
    """Put `cell` into CELLS under its name; refused where the name is a built-in cell's, or
    another source's."""
    have = _SOURCES.get(cell.name)
    if have is not None and have.sha256 == source.sha256 and have.origin == source.origin:
        return CELLS[cell.name]
    if cell.name in CELLS or cell.name == "esn":
        other = have.spec if have else "a built-in cell"
        raise CellError(f"{source.spec}: its name {cell.name!r} is taken by {other}")
    CELLS[cell.name] = cell
    _SOURCES[cell.name] = dataclasses.replace(source, name=cell.name, label=cell.label)
    return cell


def source_of(arch: str) -> CellSource | None:
    """The source of a user's cell registered under `arch`; None for a built-in one."""
    return _SOURCES.get(arch)


def ensure(sources: list[dict]) -> None:
    """Load the user's cells a trial needs (:meth:`CellSource.to_dict` each), in a Ray worker,
    which may not have their files: their code travels with the trial."""
    for d in sources:
        load(CellSource.from_dict(d))


def check(cell: Cell, sizes: list[tuple[int, int]], spec: str) -> None:
    """Run the cell once on every (layers, cells) of a grid, as memgrid will: its shapes are
    tuples of positive ints, its init gives each parameter its shape's numbers, a step of a
    layer gives out `(K, c, B)` and states of `(K, rows, B)`, and :attr:`Cell.read` gives
    `(K, units(c), B)`. A CellError names what is wrong."""
    import torch

    from .models import init_params, reference_forward

    K, B, T = 2, 3, 2
    for layers, c in sorted(set(sizes)):
        at = f"{spec} (l = {layers}, c = {c})"
        for m in sorted({1, c} if layers > 1 else {1}):
            try:
                shapes = cell.weights(m, c)
            except Exception as e:
                raise CellError(f"{at}: weights({m}, {c}) raised {type(e).__name__}: {e}") from None
            if not isinstance(shapes, dict) or not shapes or not all(
                    isinstance(s, tuple) and all(isinstance(d, int) and d > 0 for d in s)
                    for s in shapes.values()):
                raise CellError(f"{at}: weights({m}, {c}) must give a dict of shapes "
                                f"(tuples of positive ints), got {shapes!r}")
        rows = cell.state_rows(c)
        n = cell.units(c)
        if not (isinstance(rows, tuple) and rows and all(isinstance(r, int) and r > 0 for r in rows)):
            raise CellError(f"{at}: state_rows({c}) must be a tuple of positive ints, got {rows!r}")
        if not (isinstance(n, int) and n > 0):
            raise CellError(f"{at}: units({c}) must be a positive int, got {n!r}")
        try:
            params = init_params(cell.name, layers, c, "sum", torch.arange(K))
        except Exception as e:
            raise CellError(f"{at}: its init raised {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}") from None
        for name, got in params.items():      # init_params refused any count but its shape's
            if not torch.isfinite(got).all():
                raise CellError(f"{at}: init gave {name} values that are not finite")
        for i in range(layers):
            w = {k.rsplit(".", 1)[0]: v for k, v in params.items() if k.endswith(f".{i}")}
            x = torch.rand(K, 1 if i == 0 else c, B)
            state = tuple(torch.zeros(K, r, B) for r in rows)
            try:
                out, new = cell.step(w, x, state)
                read = cell.read(out, new)
            except Exception as e:
                raise CellError(f"{at}: a step of layer {i} raised {type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}") from None
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (K, c, B):
                raise CellError(f"{at}: a step of layer {i} gave out of shape "
                                f"{_shape(out)}, not (K, c, B) = {(K, c, B)}")
            if not isinstance(new, tuple) or [tuple(s.shape) for s in new] != [(K, r, B) for r in rows]:
                raise CellError(f"{at}: a step of layer {i} gave states "
                                f"{[_shape(s) for s in new] if isinstance(new, tuple) else _shape(new)}, "
                                f"not {[(K, r, B) for r in rows]} (state_rows)")
            if tuple(read.shape) != (K, n, B):
                raise CellError(f"{at}: read gave {_shape(read)}, not (K, units(c), B) = {(K, n, B)}")
        x = torch.rand(K, B, T)
        y = reference_forward(cell.name, params, x, torch.ones(K, B, 0, dtype=torch.bool))
        if not torch.isfinite(y).all():
            raise CellError(f"{at}: its output at init is not finite")


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if hasattr(t, "shape") else type(t).__name__


def single_network(name: str, weights: Callable[[int, int], Shapes], step: Callable, *,
                   state_rows: Callable[[int], tuple[int, ...]] = lambda c: (c,),
                   init: Callable | None = None, read: Callable | None = None,
                   units: Callable[[int], int] = lambda c: c, label: str = "",
                   family: str = "") -> Cell:
    """A :class:`Cell` from a step written for one network, as a plain PyTorch user writes
    it: ``step(w, x, state) -> (out, state)`` with w the layer's parameters by name in their
    own shapes (``weights(m, c)``), x `(m, B)`, state a tuple of `(rows, B)` and out `(c, B)`.
    memgrid runs it on K networks at once with ``torch.func.vmap``, so the step never sees K;
    `read` likewise (default: out). The init (default torch's U(-1/sqrt(c), 1/sqrt(c))) is
    :attr:`Cell.init`'s: it draws per member."""
    def packed_step(w, x, state):
        from torch.func import vmap

        return vmap(step)(w, x, state)

    def packed_read(out, state):
        from torch.func import vmap

        return vmap(read)(out, state)

    return Cell(name, weights, packed_step, init=init or uniform_init(lambda m, c: 1 / math.sqrt(c)),
                state_rows=state_rows, read=packed_read if read else (lambda out, state: out),
                units=units, label=label, family=family)
