"""Shared pieces of the CLI commands: resolving user input with close-match suggestions, progress bars
on stderr, and output as human tables or `--json`.

Every user error raises a `ConfigError` with a one-line message; `tda_explorer.cli.main` prints it as
`error: ...` and exits with code 2.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tda_explorer.errors import ConfigError

EXPORT_SUFFIXES = ("csv", "json", "parquet")


def suggest(value: str, options: Sequence[str]) -> str:
    """`" (did you mean 'x'?)"` for the closest option, or "".

    Among equally close options, one that starts with `value` wins, then the first in sorted order
    ("digits-000" suggests "digits-0000", not "digits-1000").
    """
    value = str(value)
    close = difflib.get_close_matches(value, [str(o) for o in options], n=20, cutoff=0.5)
    if not close:
        return ""

    def rank(option: str) -> tuple:
        ratio = difflib.SequenceMatcher(None, value, option).ratio()
        return (-round(ratio, 6), not option.startswith(value), option)

    return f" (did you mean {min(close, key=rank)!r}?)"


def one_line(text: str) -> str:
    """A message on one line: its lines joined with "; " (with " " after a line ending in ":")."""
    out = ""
    for part in (p.strip() for p in str(text).splitlines()):
        if part:
            out += ("" if not out else " " if out.endswith(":") else "; ") + part
    return out


def one_line_errors(command):
    """Wrap a command: `--run` (when it has one) is resolved first (`resolve_run_key`: unique prefixes,
    close-match suggestions), and a TDAError with a multi-line message (e.g. a config diff) leaves it as
    one line: `main` prints `error: <message>` and exits 2."""
    import functools

    from tda_explorer.errors import TDAError

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            if getattr(args, "run", None):  # a key prefix or a typo: resolved (or suggested) up front
                from tda_explorer.store import Workspace

                args.run = resolve_run_key(Workspace(args.workspace), args.run)
            return command(args)
        except TDAError as exc:
            if "\n" not in str(exc):
                raise
            raise type(exc)(one_line(str(exc))) from exc

    return run


def progress_bar(desc: str):
    """A core Progress callback `(done, total, msg)` drawing a tqdm bar on stderr; returns (callback, bar)."""
    bar = tqdm(total=1, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)

    def update(done: int, total: int, msg: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(str(msg)[:60])
        bar.refresh()

    return update, bar


def parse_settings(items: Sequence[str] | None) -> dict:
    """`key=value` pairs; values parsed as JSON when possible (numbers, lists, null), else strings."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"setting {item!r} is not of the form key=value (e.g. --set params=head).")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def method_flag_names() -> dict[str, list[str]]:
    """`{setting name: [methods that have it]}` over every method's settings dataclass."""
    from tda_explorer.attributors.method_settings import METHOD_SETTINGS

    out: dict[str, list[str]] = {}
    for method, cls in sorted(METHOD_SETTINGS.items()):
        for name in cls.names():
            out.setdefault(name, []).append(method)
    return out


class _SettingFlag(argparse.Action):
    """`--proj-dim 512` is recorded as `--set proj_dim=512` (same parsing, command-line order kept)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        items = list(getattr(namespace, "set", None) or [])
        namespace.set = [*items, f"{self.metavar_name}={values}"]

    def __init__(self, *args, setting: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.metavar_name = setting


def add_method_flags(p: argparse.ArgumentParser) -> None:
    """One `--name VALUE` flag per method setting (`--proj-dim 512`, `--damping-factor auto`), generated
    from the settings dataclasses and recorded as `--set name=VALUE`; a flag the command already has
    (e.g. its own `--seed`) is left to `--set`. Defaults differ per method, so `settings_epilog` lists
    them."""
    from tda_explorer.attributors.settings_help import method_fields

    if "--set" not in p._option_string_actions:
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method setting (repeatable)")
    group = p.add_argument_group("method settings (see the list below for each method's defaults)")
    for name, methods in method_flag_names().items():
        helps = Counter(s.help for m in methods for s in method_fields(m) if s.name == name).most_common()
        text = helps[0][0] if len(helps) == 1 or helps[0][1] > 1 else "differs per method, see the list below"
        option = "--" + name.replace("_", "-")
        if option in p._option_string_actions:
            continue
        shown = ", ".join(methods) if len(methods) <= 3 else f"{len(methods)} methods"
        group.add_argument(option, action=_SettingFlag, setting=name, default=argparse.SUPPRESS,
                           metavar="V", help=f"{text} [{shown}]")  # fmt: skip
    p.set_defaults(method_flags=True)


def method_settings_from_args(args: argparse.Namespace) -> dict:
    """The method settings a command line gave (`--set KEY=VALUE` and the setting flags, in order)."""
    return parse_settings(getattr(args, "set", None))


def check_method(method: str, settings: dict) -> None:
    """ConfigError (with the valid names and a close match) for an unknown method or setting, before any
    expensive step; builds the attributor once, which only validates its settings."""
    from tda_explorer.attributors import make_attributor

    make_attributor(method, **settings)


def resolve_run_key(ws, key: str) -> str:
    """The full run key for `key` (a full key, or a unique prefix of one, as the app shows 8 characters).

    Raises:
        ConfigError: No run matches (with the closest key), or the prefix is ambiguous.
    """
    keys = [str(m.get("key")) for m in ws.scan("runs")[0]]
    if key in keys:
        return key
    matches = [k for k in keys if key and k.startswith(key)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"run key prefix {key!r} matches {len(matches)} runs; give more characters.")
    hint = suggest(key, keys) or (" (the workspace has no runs yet)" if not keys else "")
    raise ConfigError(f"no run {key!r} in workspace {ws.root}{hint}; list them with `tda-explorer runs`.")


@dataclass
class Context:
    """What most commands need: the workspace, the run and its dataset splits."""

    ws: Any
    run: Any
    splits: Any


def method_scores(ctx: Context, args: argparse.Namespace, split: str):
    """The ScoreResult of `--method` with its `--set` settings on the `split` queries: from the
    workspace when the app or the CLI computed it before, else computed (progress on stderr) and stored."""
    from tda_explorer.attributors.scores import compute_scores

    update, bar = progress_bar(f"{args.method} scores")
    try:
        settings = method_settings_from_args(args)
        return compute_scores(ctx.run, ctx.splits, args.method, settings, split, ctx.ws, update)
    finally:
        bar.close()


def open_run(args: argparse.Namespace) -> Context:
    """Workspace (from `--workspace`), the run (`--run`, checked with suggestions) and its data."""
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.store import Workspace
    from tda_explorer.training import load_run

    ws = Workspace(args.workspace)
    run = load_run(resolve_run_key(ws, args.run), ws)
    return Context(ws, run, load_dataset(DatasetSpec.from_dict(run.dataset)))


def find_id(example_id: str, ids: Sequence[str], where: str) -> int:
    """Position of `example_id` in `ids`; ConfigError with the closest id when it is not there."""
    try:
        return list(ids).index(example_id)
    except ValueError:
        raise ConfigError(
            f"id {example_id!r} is not in the {where}{suggest(example_id, ids)}; ids look like {ids[0]!r}."
        ) from None


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays unwrapped, tuples as lists, NaN/Inf as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_json(data: Any) -> None:
    """One JSON document on stdout."""
    print(json.dumps(jsonable(data), indent=1, ensure_ascii=False, allow_nan=False))


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """Rows as an aligned text table (floats with 4 significant digits)."""
    if not rows:
        return "(none)"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "n/a" if not math.isfinite(v) else f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[j]) for row in cells)) for j, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def export_format(path: str, fmt: str | None = None) -> str:
    """`fmt`, or the format named by the file's extension (csv, json, parquet)."""
    fmt = (fmt or Path(path).suffix.lstrip(".")).lower()
    if fmt not in EXPORT_SUFFIXES:
        raise ConfigError(
            f"cannot tell the export format of {path!r}: use a .csv, .json or .parquet file (or --format)."
        )
    return fmt


def write_table(table, path: str, fmt: str | None = None) -> Path:
    """Write a DataFrame atomically as csv/json/parquet (`store.exports.export_bytes`); returns the path."""
    from tda_explorer.store.atomic import atomic_write_bytes
    from tda_explorer.store.exports import export_bytes

    return atomic_write_bytes(Path(path), export_bytes(table, export_format(path, fmt)))


def add_run_args(p: argparse.ArgumentParser, method: bool | str = False) -> None:
    """`--run` (+ `--method`, `--set`, `--split` when `method`; "optional" makes --method optional) and
    `--json`."""
    p.add_argument("--run", required=True, help="run key or a unique prefix of it (see `runs`)")
    if method:
        from tda_explorer.attributors import ATTRIBUTORS

        p.add_argument(
            "--method",
            required=method != "optional",
            metavar="M",
            help=f"attribution method: {', '.join(sorted(ATTRIBUTORS))} (settings: `attribute --help`)",
        )
        p.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="method setting, e.g. params=head (repeatable)",
        )
        p.epilog = settings_epilog()
        p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_json_arg(p)


def settings_epilog() -> str:
    """Each method's `--set` settings with defaults and help (for `--help` of commands taking --method)."""
    from tda_explorer.attributors.settings_help import settings_help

    return (
        "method settings (--name VALUE, e.g. --proj-dim 512, or --set name=VALUE; values are JSON or "
        "plain strings; default shown):\n" + settings_help()
    )


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
