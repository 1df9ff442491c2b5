"""docs/reference.md, generated from the code: every grid-file setting and every CLI flag.

The settings come from the dataclasses of :mod:`memgrid.config` (``Point``, ``Grid``,
``Resources``, ``LRTuning``, ``Walk``): each field's docstring (the string
literal under it), its default, whether it may be an axis, and which section of a grid file
holds it. The flags come from the click commands of :mod:`memgrid.cli`: each option's help,
type and default. Nothing here is written by hand, so the page cannot disagree with the code;
``tests/test_docs.py`` fails when the committed page differs from :func:`render`.

Regenerate with ``python -m memgrid.reference`` (``--check`` exits 1 when the page is stale).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
from pathlib import Path

import click

PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
"""where the generated page lives in the repository"""
COMMAND = "python -m memgrid.reference"
"""the one command that regenerates the page"""


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in `cls`'s class body (a string literal
    right after an annotated assignment), whitespace collapsed; '' where there is none."""
    tree = ast.parse(inspect.getsource(cls))
    body = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)).body
    docs: dict[str, str] = {}
    for here, after in zip(body, [*body[1:], None]):
        if isinstance(here, ast.AnnAssign) and isinstance(here.target, ast.Name):
            text = ""
            if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                text = " ".join(after.value.value.split())
            docs[here.target.id] = text
    return docs


def _cell(text: object) -> str:
    """A value as it may stand in a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:   # type: ignore[misc]
        return "(see below)"
    else:
        return "required"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return f"`{value}`"


def _settings_section() -> list[str]:
    from . import config

    point_docs = field_docs(config.Point)
    point_fields = {f.name: f for f in dataclasses.fields(config.Point)}
    protocols = getattr(config, "PROTOCOLS", {})
    names = list(protocols)
    sections = getattr(config, "SECTIONS", {})
    axis_keys = set(getattr(config, "AXIS_KEYS", ()))
    required = tuple(getattr(config, "REQUIRED_AXES", ()))

    out = ["## Grid files", "",
           "A grid file is YAML. Its top-level keys are `name`, `protocol`, `axes`, the sections "
           "below, `resources`, `tune_lr` and `walk`; every key is checked at load time, and an "
           "unknown key, a wrong type or an impossible value ends the run with one line naming "
           "the file and the key (exit status 2).", "",
           "### The grid (`memgrid.config.Grid`)", "",
           "| key | meaning |", "| --- | --- |"]
    for name, text in field_docs(config.Grid).items():
        if name in ("source", "fixed"):
            continue   # not keys of a file: where it was read from, and the sections' values
        out.append(f"| `{name}` | {_cell(text)} |")
    out += ["", "### `axes`", "",
            "Lists, scalars or inclusive integer ranges `a..b`; the points are their product. "
            f"Required: {', '.join(f'`{k}`' for k in required)}. A setting marked *axis* below "
            "may be an axis too (`lr: [0.003, 0.01]` under `axes`).", ""]
    in_section = {k for keys in sections.values() for k in keys}
    proto_head = "".join(f" {n} |" for n in names)
    for section, keys in [("axes", required), *sections.items()]:
        out += ([f"### `{section}`", ""] if section != "axes" else []) + [
                f"| key | default |{proto_head} axis | meaning |",
                "| --- | --- |" + " --- |" * len(names) + " --- | --- |"]
        for key in keys:
            f = point_fields.get(key)
            if f is None:
                continue
            in_protocol = any(key in p for p in protocols.values())
            default = "protocol" if in_protocol else _default(f)
            per = "".join(f" `{protocols[n][key]}` |" if key in protocols[n] else " |"
                          for n in names)
            axis = "axis" if key in axis_keys else ""
            out.append(f"| `{key}` | {default} |{per} {axis} | {_cell(point_docs.get(key, ''))} |")
        out.append("")
    rest = [k for k in point_fields if k not in in_section and k not in required]
    if rest:
        out += ["Settings no section holds (set by memgrid, not by a grid file): "
                + ", ".join(f"`{k}`" for k in rest) + ".", ""]
    sections = [("resources", config.Resources, "How trials are cut and placed; they change no "
                 "result."),
                ("tune_lr", config.LRTuning, "`tune_lr: true` takes every default; a mapping "
                 "sets some."),
                ("walk", config.Walk, "`walk: true` takes every default; a mapping sets some.")]
    for key, cls, intro in sections:
        out += [f"### `{key}` (`memgrid.config.{cls.__name__}`)", "", intro, "",
                "| key | default | meaning |", "| --- | --- | --- |"]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, text in field_docs(cls).items():
            out.append(f"| `{name}` | {_default(fields[name])} | {_cell(text)} |")
        out.append("")
    return out


def _param_type(p: click.Parameter) -> str:
    if getattr(p, "is_flag", False):
        return "flag"
    return {"float": "number", "integer": "integer", "text": "text"}.get(p.type.name, p.type.name)


def _cli_section() -> list[str]:
    from .cli import main

    out = ["## Commands", "",
           "Every command and flag of `memgrid` (`memgrid COMMAND --help` prints the same).", ""]
    for name, cmd in main.commands.items():
        help_text = inspect.cleandoc(cmd.help or "").replace("\b\n", "")
        first = " ".join(help_text.split("\n\n")[0].split())
        args = " ".join(p.human_readable_name for p in cmd.params
                        if isinstance(p, click.Argument))
        out += [f"### `memgrid {name}{' ' + args if args else ''}`", "", _cell(first), ""]
        options = [p for p in cmd.params if isinstance(p, click.Option)]
        if not options:
            continue
        out += ["| flag | takes | default | meaning |", "| --- | --- | --- | --- |"]
        for p in options:
            shown = p.show_default and p.default not in (None, False) and not callable(p.default)
            default = f"`{p.default}`" if shown else ""
            out.append(f"| `{', '.join(p.opts)}` | {_param_type(p)} | {default} "
                       f"| {_cell(' '.join((p.help or '').split()))} |")
        out.append("")
    return out


def render() -> str:
    """The whole of docs/reference.md, from the code as it is imported now."""
    lines = ["# Reference: grid settings and command-line flags", "",
             f"<!-- Generated by `{COMMAND}` from the docstrings of memgrid/config.py "
             "and memgrid/cli.py. Do not edit by hand. -->", "",
             "Every setting a grid file may name and every flag of the `memgrid` command, with "
             "its default and meaning, as the code defines them. A setting marked `protocol` "
             "takes its value from the grid's protocol (the two columns) unless the file names "
             "it. The user guide ([guide.md](guide.md)) says how they fit together.", ""]
    return "\n".join(lines + _settings_section() + _cli_section()).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=COMMAND, description="Write docs/reference.md.")
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if docs/reference.md differs from the code")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        same = PAGE.exists() and PAGE.read_text() == text
        print(f"{PAGE}: {'up to date' if same else f'stale; run {COMMAND}'}")
        return 0 if same else 1
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
