"""`explain` (one query's proponents and opponents) and `--measurement`, shared with `attribute`.

What the scores explain (`tda_explorer.attributors.measurement`), sign convention included:
- "predicted": the loss of the class the model predicted for the query; a positive score = up-weighting the
  training example lowers that loss, i.e. it pushes the model toward what it predicted (for a mistake: why
  it made it). `explain`'s default on the test split, as in the app.
- "true_label": the loss of the query's own label; a positive score = the example lowers it (helps the model
  get it right). What `attribute` stores (its default) and the only choice for `--split val`.
Only the rows of misclassified queries differ; they are recomputed once and cached.
"""

from __future__ import annotations

import argparse

from tda_explorer.cli_commands.common import (
    add_run_args,
    check_method,
    find_id,
    format_table,
    method_scores,
    method_settings_from_args,
    open_run,
    print_json,
    progress_bar,
    suggest,
)
from tda_explorer.cli_commands.explore import _class, _example
from tda_explorer.errors import ConfigError

MEASUREMENT_HELP = (
    "what the scores explain: 'predicted' = the loss of the class the model predicted (positive score = "
    "the training example pushes the model toward its prediction) or 'true_label' = the loss of the "
    "query's label (positive = the example lowers it). d-TDA's own measurement setting is --set measurement=..."
)


def add_measurement_arg(p: argparse.ArgumentParser, default: str) -> None:
    """`--measurement predicted|true_label`, validated by the command (a bad value: one `error:` line)."""
    p.add_argument("--measurement", metavar="{predicted,true_label}", help=f"{MEASUREMENT_HELP}; {default}")


def check_measurement(value: str | None, split: str, default: str) -> str:
    """The measurement to use: `value`, or `default` when None. ConfigError for an unknown value (with the
    closest valid one) and for "predicted" on a split other than test (the predictions are the test set's)."""
    from tda_explorer.attributors.measurement import MEASUREMENTS

    value = default if value is None else value
    if value not in MEASUREMENTS:
        raise ConfigError(
            f"--measurement {value!r} is not one of {', '.join(MEASUREMENTS)}{suggest(value, MEASUREMENTS)}."
        )
    if value == "predicted" and split != "test":
        raise ConfigError(
            "--measurement predicted explains test predictions; use --split test or true_label."
        )
    return value


def result_kind(measurement: str) -> str:
    """The workspace artifact kind holding a measurement's scores."""
    from tda_explorer.attributors.measurement import PREDICTED_KIND

    return PREDICTED_KIND if measurement == "predicted" else "scores"


def measured(ctx, result, measurement: str):
    """`result` (true-label test scores) re-expressed for `measurement` (cached in the workspace)."""
    if measurement == "true_label":
        return result
    from tda_explorer.attributors.measurement import predicted_classes, scores_for_measurement

    predicted = predicted_classes(ctx.run, ctx.splits)[ctx.splits.test.index_of(list(result.query_ids))]
    update, bar = progress_bar("predicted-class scores")
    try:
        return scores_for_measurement(ctx.run, ctx.splits, result, measurement, predicted, ctx.ws, update)
    finally:
        bar.close()


def cmd_explain(args: argparse.Namespace) -> int:
    """Proponents (positive scores: they help the measured loss) and opponents of one query."""
    if args.k < 1:
        raise ConfigError(f"--k must be at least 1, got {args.k}.")
    measurement = check_measurement(
        args.measurement, args.split, "predicted" if args.split == "test" else "true_label"
    )
    check_method(args.method, method_settings_from_args(args))
    ctx = open_run(args)
    queries = getattr(ctx.splits, args.split)
    q = find_id(args.query, queries.ids, f"{args.split} split")
    result = measured(ctx, method_scores(ctx, args, args.split), measurement)
    q = result.query_ids.index(queries.ids[q])
    support, oppose = result.top_k(q, args.k)
    train, row = ctx.splits.train, result.scores[q]
    probs = ctx.run.predict(queries.subset([q]))[0]
    pred = int(probs.argmax())
    out = {
        "run": ctx.run.key,
        "method": args.method,
        "score_key": result.key,
        "measurement": measurement,
        "query": {
            **_example(queries, q),
            "split": args.split,
            "predicted": pred,
            "predicted_class": _class(queries, pred),
            "confidence": float(probs.max()),
        },
        "proponents": [{"rank": r + 1, **_example(train, int(i), row[i])} for r, i in enumerate(support)],
        "opponents": [{"rank": r + 1, **_example(train, int(i), row[i])} for r, i in enumerate(oppose)],
    }
    if args.json:
        print_json(out)
        return 0
    qd = out["query"]
    target = (
        f"the predicted class {qd['predicted_class']}"
        if measurement == "predicted"
        else f"the label {qd['class_name']}"
    )
    print(
        f"query {qd['id']} ({args.split}): label {qd['class_name']}, predicted {qd['predicted_class']} "
        f"({qd['confidence']:.1%}); {args.method} scores of the loss of {target}, positive = lowers it"
    )
    for name in ("proponents", "opponents"):
        print(f"\n{name}:")
        print(format_table(out[name], ["rank", "id", "class_name", "score"]))
    return 0


def add_commands(sub) -> None:
    """Register `explain` on the CLI's subparsers."""
    e = sub.add_parser("explain", help="proponents and opponents of one query, with scores")
    add_run_args(e, method=True)  # (raw description formatting: the convention below keeps its lines)
    e.description = __doc__.split("\n\n", 1)[1]
    e.add_argument("--query", required=True, metavar="ID", help="query example id (e.g. digits-0002)")
    e.add_argument("--k", type=int, default=10, help="proponents and opponents shown (default 10)")
    e.add_argument("--split", default="test", choices=["test", "val"], help="query split (default test)")
    add_measurement_arg(e, "default predicted (true_label with --split val)")
    e.set_defaults(func=cmd_explain)
