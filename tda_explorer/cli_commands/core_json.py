"""`--json` for the original commands (train, import, runs, attribute) without rewriting them in cli.py.

`add_json_variants(sub)` adds the flag to those subparsers and routes `--json` calls here: `runs` and
`attribute` are answered directly (same core calls, same cache), `train` and `import` run as usual with
their human lines kept off stdout, then the stored run is described as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Callable

from tda_explorer.cli_commands.common import (
    add_json_arg,
    check_method,
    method_scores,
    method_settings_from_args,
    open_run,
    print_json,
)


def run_summary(meta: dict) -> dict:
    """JSON description of a stored run from its meta: key, dataset, model, seeds, per-seed metrics."""
    from tda_explorer.training.runs import run_meta_fields

    key = str(meta.get("key", "?"))
    cfg, seeds, extra = run_meta_fields(key, meta)
    metrics = extra.get("metrics") or {}
    accs = [m.get("test_acc") for m in metrics.values() if isinstance(m, dict)]
    accs = [float(a) for a in accs if a is not None]
    return {
        "key": key,
        "dataset": cfg["dataset"],
        "model": cfg["model"].get("arch") if isinstance(cfg["model"], dict) else cfg["model"],
        "imported": cfg.get("imported", {}).get("factory") if isinstance(cfg.get("imported"), dict) else None,
        "seeds": list(seeds),
        "metrics": metrics,
        "mean_test_acc": sum(accs) / len(accs) if accs else None,
        "created": meta.get("created"),
    }


def runs_json(args: argparse.Namespace) -> int:
    """`runs --json`: every readable run and every unreadable one with its reason."""
    from tda_explorer.errors import TDAError
    from tda_explorer.store import Workspace

    metas, broken = Workspace(args.workspace).scan("runs")
    runs = []
    for meta in metas:
        try:
            runs.append(run_summary(meta))
        except TDAError as exc:
            broken.append((str(meta.get("key", "?")), str(exc)))
    print_json({"runs": runs, "unreadable": [{"key": k, "reason": r} for k, r in broken]})
    return 0


def attribute_json(args: argparse.Namespace) -> int:
    """`attribute --json`: the score artifact's key, folder, shape and compute seconds (with `--measurement
    predicted`: the predicted-class scores' artifact)."""
    from tda_explorer.cli_commands.explain import check_measurement, measured, result_kind

    check_method(args.method, method_settings_from_args(args))
    measurement = check_measurement(args.measurement, args.split, "true_label")
    ctx = open_run(args)
    result = measured(ctx, method_scores(ctx, args, args.split), measurement)
    print_json(
        {
            "run": ctx.run.key,
            "method": args.method,
            "settings": result.config["method"],
            "split": args.split,
            "measurement": measurement,
            "score_key": result.key,
            "path": str(ctx.ws.path(result_kind(measurement), result.key)),
            "n_query": int(result.scores.shape[0]),
            "n_train": int(result.scores.shape[1]),
            "seconds": result.seconds,
        }
    )
    return 0


def _quiet_then_describe(command: Callable[[argparse.Namespace], int], key_of: Callable[[str], str]):
    """Run `command` with its stdout captured (sent to stderr), then print the stored run as JSON."""

    def run(args: argparse.Namespace) -> int:
        from tda_explorer.store import Workspace

        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            code = command(args)
        sys.stderr.write(captured.getvalue())
        if code == 0:
            ws = Workspace(args.workspace)
            print_json(run_summary(ws.meta("runs", key_of(captured.getvalue()))))
        return code

    return run


def _train_key(text: str) -> str:
    return text.split()[1]  # "run <key> stored in ..."


def _import_key(text: str) -> str:
    return text.strip().splitlines()[-1].strip()  # the key is import's last line


def add_json_variants(sub) -> None:
    """Add `--json` to train, import, runs and attribute (those present) and route it here."""
    variants = {
        "runs": lambda orig: runs_json,
        "attribute": lambda orig: attribute_json,
        "train": lambda orig: _quiet_then_describe(orig, _train_key),
        "import": lambda orig: _quiet_then_describe(orig, _import_key),
    }
    for name, make in variants.items():
        parser = sub.choices.get(name)
        if parser is None or any("--json" in a.option_strings for a in parser._actions):
            continue
        add_json_arg(parser)
        orig = parser.get_default("func")
        variant = make(orig)
        parser.set_defaults(func=lambda args, _o=orig, _v=variant: _v(args) if args.json else _o(args))
