"""Commands that look at attributions (`explain` is in `explain.py`): `dtda` (a query's
per-seed distribution), `map` (UMAP coordinates) and `export` (scores, top-k, self-influence, flags).

All reuse the workspace's cached artifacts (scores, d-TDA, maps), as the app does.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from tda_explorer.cli_commands.common import (
    add_run_args,
    check_method,
    export_format,
    find_id,
    format_table,
    method_scores,
    open_run,
    parse_settings,
    print_json,
    progress_bar,
    write_table,
)
from tda_explorer.errors import ConfigError


def _example(examples, i: int, score: float | None = None) -> dict:
    label = int(examples.labels[i])
    row = {"id": examples.ids[i], "label": label, "class_name": _class(examples, label)}
    return row if score is None else {**row, "score": float(score)}


def _class(examples, label: int) -> str:
    return str(examples.class_names[label]) if examples.class_names else ""


# ------------------------------------------------------------------------------------------- dtda
def cmd_dtda(args: argparse.Namespace) -> int:
    """d-TDA of one query: per-seed measurements and the training examples with the largest influences."""
    from tda_explorer.attributors.dtda import compute_dtda

    settings = {"base": args.base, "measurement": args.measurement, **parse_settings(args.set)}
    check_method("dtda", settings)  # validates the settings (names with suggestions) before any work
    ctx = open_run(args)
    if len(ctx.run.seeds) < 2:
        raise ConfigError(f"d-TDA compares seeds: run {ctx.run.key} has {len(ctx.run.seeds)}; train >= 2.")
    queries = getattr(ctx.splits, args.split)
    find_id(args.query, queries.ids, f"{args.split} split")
    update, bar = progress_bar("d-TDA")
    try:
        result = compute_dtda(ctx.run, ctx.splits, settings, args.split, ctx.ws, update)
    finally:
        bar.close()
    q = result.query_ids.index(args.query)
    mean, var, w2 = (f()[q] for f in (result.mean_influence, result.variance_influence, result.w2_influence))
    train = ctx.splits.train
    if args.train_id:
        chosen = [find_id(args.train_id, result.train_ids, "training set")]
    else:
        chosen = [int(i) for i in np.argsort(-np.abs(mean), kind="stable")[: args.k]]
    rows = [
        {
            **_example(train, int(train.index_of([result.train_ids[z]])[0])),
            "mean_influence": float(mean[z]),
            "variance_influence": float(var[z]),
            "w2_influence": float(w2[z]),
            "deltas": result.deltas[:, q, z].astype(float).tolist(),
        }
        for z in chosen
    ]
    out = {
        "run": ctx.run.key,
        "query": args.query,
        "measurement": result.measurement,
        "base": result.base,
        "seeds": list(result.seeds),
        "measurements": result.measurements[:, q].tolist(),
        "key": result.key,
        "top": rows,
    }
    if args.json:
        print_json(out)
        return 0
    values = ", ".join(f"{v:.4g}" for v in out["measurements"])
    print(f"query {args.query}: {result.measurement} per seed {list(result.seeds)} = [{values}]")
    print("deltas = predicted change of the measurement when the example is removed, per seed\n")
    shown = [{**r, "deltas": " ".join(f"{d:+.3g}" for d in r["deltas"])} for r in rows]
    cols = ["id", "class_name", "mean_influence", "variance_influence", "w2_influence", "deltas"]
    print(format_table(shown, cols))
    return 0


# -------------------------------------------------------------------------------------------- map
def cmd_map(args: argparse.Namespace) -> int:
    """UMAP coordinates of the training (+ test) examples, cached as the app's map."""
    from tda_explorer.maps import compute_map

    if args.out:
        export_format(args.out)
    ctx = open_run(args)
    update, bar = progress_bar("map")
    try:
        result = compute_map(
            ctx.run,
            ctx.splits,
            args.representation,
            args.include_test,
            args.neighbors,
            args.seed,
            ctx.ws,
            update,
        )
    finally:
        bar.close()
    sets = {"train": ctx.splits.train, "test": ctx.splits.test}
    labels = [
        int(sets[s].labels[sets[s].index_of([i])[0]]) for i, s in zip(result.ids, result.split, strict=True)
    ]
    table = pd.DataFrame(
        {
            "id": result.ids,
            "split": result.split,
            "x": result.coords[:, 0].astype(np.float64),
            "y": result.coords[:, 1].astype(np.float64),
            "label": labels,
            "class_name": [_class(ctx.splits.train, c) for c in labels],
        }
    )
    path = write_table(table, args.out) if args.out else None
    if args.json:
        print_json({"run": ctx.run.key, "key": result.key, "out": str(path) if path else None,
                    "points": table.to_dict(orient="records")})  # fmt: skip
        return 0
    print(
        f"map {result.key}: {len(table)} points ({args.representation})"
        + (f" written to {path}" if path else "")
    )
    if not path:
        print(format_table(table.head(10).to_dict(orient="records")))
    return 0


# ----------------------------------------------------------------------------------------- export
EXPORT_WHAT = ("scores", "topk", "self_influence", "flags")
EXPORT_HELP = """What `export` writes (format from --out's extension or --format: csv, json records, parquet):
  scores          one row per query: query_id, then one column per training id (the [n_query, n_train] matrix)
  topk            one row per (query, kind, rank): query_id, kind (proponent|opponent), rank, train_id,
                  label, class_name, score
  self_influence  one row per training example: id, label, class_name, self_influence
  flags           one row per flag of the run: id, flagged, suggested_label, note, updated_at
Kept/removed lists of a pruning choice: `prune --export FILE`. CSV text cells that a spreadsheet would run
as a formula get a leading ' (store.exports)."""


def flags_frame(ws, run_key: str, include_unflagged: bool = False) -> pd.DataFrame:
    """The run's flags as a table `id, flagged, suggested_label, note, updated_at`."""
    flags = ws.flags().get(run_key, include_unflagged=include_unflagged)
    rows = [
        {"id": f.example_id, "flagged": f.flagged, "suggested_label": f.suggested_label, "note": f.note,
         "updated_at": f.updated_at}
        for f in flags.values()
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["id", "flagged", "suggested_label", "note", "updated_at"])


def cmd_export(args: argparse.Namespace) -> int:
    """Write scores, top-k, self-influence or flags of a run to a file."""
    if args.what != "flags" and not args.method:
        raise ConfigError(f"exporting {args.what} needs --method (the attributor whose scores to export).")
    export_format(args.out, args.format)  # refuse a bad file name before computing anything
    if args.what != "flags":
        check_method(args.method, parse_settings(args.set))
    ctx = open_run(args)
    train = ctx.splits.train
    if args.what == "flags":
        table = flags_frame(ctx.ws, ctx.run.key, args.all)
    else:
        result = method_scores(ctx, args, args.split)
        labels = train.labels.numpy()[train.index_of(result.train_ids)]
        if args.what == "scores":
            table = pd.DataFrame(result.scores.astype(np.float64), columns=list(result.train_ids))
            table.insert(0, "query_id", list(result.query_ids))
        elif args.what == "self_influence":
            table = pd.DataFrame(
                {"id": list(result.train_ids), "label": labels, "class_name": [_class(train, c) for c in labels],
                 "self_influence": result.self_influence.astype(np.float64)}
            )  # fmt: skip
        else:
            rows = []
            for q, query_id in enumerate(result.query_ids):
                for kind, order in zip(("proponent", "opponent"), result.top_k(q, args.k), strict=True):
                    rows += [
                        {"query_id": query_id, "kind": kind, "rank": r + 1, "train_id": result.train_ids[i],
                         "label": int(labels[i]), "class_name": _class(train, int(labels[i])),
                         "score": float(result.scores[q, i])}
                        for r, i in enumerate(order)
                    ]  # fmt: skip
            table = pd.DataFrame(rows)
    path = write_table(table, args.out, args.format)
    if args.json:
        print_json({"run": ctx.run.key, "what": args.what, "out": str(path), "rows": len(table),
                    "columns": list(map(str, table.columns))[:20]})  # fmt: skip
    else:
        print(f"{args.what}: {len(table)} rows written to {path}")
    return 0


# ------------------------------------------------------------------------------------ registration
def add_commands(sub) -> None:
    """Register dtda, map and export on the CLI's subparsers."""
    from tda_explorer.attributors.dtda import BASES, MEASUREMENTS
    from tda_explorer.maps import REPRESENTATIONS

    d = sub.add_parser(
        "dtda", help="d-TDA: per-seed measurement of a query and its most influential examples"
    )
    add_run_args(d)
    d.add_argument("--query", required=True, metavar="ID", help="query example id")
    d.add_argument("--measurement", default="loss", choices=MEASUREMENTS, help="default loss")
    d.add_argument(
        "--base", default="influence", choices=BASES, help="per-seed attributor (default influence)"
    )
    d.add_argument(
        "--k", type=int, default=8, help="training examples shown, by |mean influence| (default 8)"
    )
    d.add_argument("--train-id", metavar="ID", help="show this training example's per-seed values only")
    d.add_argument("--split", default="test", choices=["test", "val"], help="query split (default test)")
    d.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help='other d-TDA settings, e.g. base_settings={"params":"head"}',
    )
    d.set_defaults(func=cmd_dtda)

    m = sub.add_parser("map", help="UMAP coordinates of the training set (cached as the app's map)")
    add_run_args(m)
    m.add_argument(
        "--representation", default="penultimate", choices=REPRESENTATIONS[:2], help="default penultimate"
    )
    m.add_argument("--include-test", action="store_true", help="also place the test examples")
    m.add_argument("--neighbors", type=int, default=15, help="UMAP n_neighbors (default 15)")
    m.add_argument("--seed", type=int, default=0, help="UMAP seed (default 0)")
    m.add_argument(
        "--out", metavar="FILE", help="write id, split, x, y, label, class_name (.csv/.json/.parquet)"
    )
    m.set_defaults(func=cmd_map)

    x = sub.add_parser(
        "export",
        help="write scores, top-k, self-influence or flags as csv/json/parquet",
        description=EXPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_args(x, method="optional")
    x.add_argument("--what", required=True, choices=EXPORT_WHAT)
    x.add_argument("--out", required=True, metavar="FILE", help="output file (.csv, .json or .parquet)")
    x.add_argument("--format", choices=["csv", "json", "parquet"], help="default: from --out's extension")
    x.add_argument("--split", default="test", choices=["test", "val"], help="query split (default test)")
    x.add_argument("--k", type=int, default=10, help="topk: proponents and opponents per query (default 10)")
    x.add_argument("--all", action="store_true", help="flags: include unflagged rows (their notes are kept)")
    x.set_defaults(func=cmd_export)
