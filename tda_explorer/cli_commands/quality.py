"""Commands that judge methods and the training set: `evaluate` (LDS, mislabel detection, pruning curve,
counterfactual removal), `mislabels` (ranking + flagging), `flags` (list / export) and `prune` (the
kept/removed table the app's Pruning page exports).

Defaults are small (e.g. `--subsets 20`) so a command finishes in seconds on the digits demo; the app's
defaults are larger. Ground truths and curves are cached in the workspace and shared with the app.
"""

from __future__ import annotations

import argparse
import textwrap

from tda_explorer.backend.usefulness import DEFAULT_PRUNING_RULE, ITERATIVE_RULES, PRUNING_RULES
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
    suggest,
    write_table,
)
from tda_explorer.errors import ConfigError

METRICS = ("lds", "mislabel", "pruning", "counterfactual")


def _executor(args: argparse.Namespace):
    from tda_explorer.training.executor import make_executor

    return make_executor("local", args.workers)


# --------------------------------------------------------------------------------------- evaluate
def _lds(ctx, args) -> dict:
    from tda_explorer.evaluation import LDSConfig, compute_lds_truth, lds_score

    config = LDSConfig(n_subsets=args.subsets, alpha=args.alpha, seeds=tuple(range(args.retrain_seeds)))
    result = method_scores(ctx, args, "test")
    update, bar = progress_bar("LDS ground truth")
    try:
        data, run = ctx.splits, ctx.run
        truth = compute_lds_truth(
            data.train, data.test, run.model_config, run.train_config, config, ctx.ws, _executor(args), update
        )
    finally:
        bar.close()
    lds = lds_score(result.scores, truth)
    return {**lds.to_dict(), "truth_key": truth.key, "subsets": args.subsets, "alpha": args.alpha}


def _mislabel(ctx, args) -> dict:
    from tda_explorer.attributors import make_attributor
    from tda_explorer.evaluation import mislabel_experiment, mislabel_metrics, training_loss_scores

    data, run = ctx.splits, ctx.run
    if data.flipped_ids:  # the run was trained on noisy labels: score it as it is
        result = method_scores(ctx, args, "test")
        ids = data.train.ids
        baseline = training_loss_scores(run, data.train).numpy()
        return {
            "source": "run's injected label noise",
            "result": mislabel_metrics(result.self_influence, data.flipped_ids, ids).to_dict(),
            "baseline": mislabel_metrics(baseline, data.flipped_ids, ids).to_dict(),
        }
    attributor = make_attributor(args.method, **parse_settings(args.set))
    update, bar = progress_bar("mislabel experiment")
    try:
        report = mislabel_experiment(
            data, attributor, run.model_config, run.train_config, args.noise, args.noise_seed, run.seeds,
            ctx.ws, _executor(args), update,
        )  # fmt: skip
    finally:
        bar.close()
    return {"source": f"flipped {args.noise:.0%} of the labels and retrained", **report.to_dict()}


def _pruning(ctx, args) -> dict:
    from tda_explorer.backend.usefulness import curve_fractions, usefulness
    from tda_explorer.evaluation import compute_pruning_curve

    result = method_scores(ctx, args, "val")
    data, run = ctx.splits, ctx.run
    fractions = curve_fractions(args.largest, args.step)
    update, bar = progress_bar("pruning curve")
    try:
        curve = compute_pruning_curve(
            usefulness(result.scores), data.train, data.test, run.model_config, run.train_config, fractions,
            tuple(range(args.retrain_seeds)), workspace=ctx.ws, executor=_executor(args), progress=update,
            source=result.key,
        )  # fmt: skip
    finally:
        bar.close()
    return {"rows": curve.table(), "retrain_seeds": list(curve.seeds)}


def _counterfactual(ctx, args) -> dict:
    from tda_explorer.evaluation import counterfactual_test

    result = method_scores(ctx, args, "test")
    data, run = ctx.splits, ctx.run
    if args.queries < 1:
        raise ConfigError(f"--queries must be at least 1, got {args.queries}.")
    n = min(args.queries, len(result.query_ids))
    positions = data.test.index_of(result.query_ids[:n])
    update, bar = progress_bar("counterfactual")
    try:
        cf = counterfactual_test(
            run, data.train, data.test.subset(positions), result.scores[:n], tuple(args.ks),
            run.seeds[: args.retrain_seeds], executor=_executor(args), progress=update,
        )  # fmt: skip
    finally:
        bar.close()
    return {"rows": cf.table(), "query_ids": list(cf.query_ids), "skipped_ids": list(cf.skipped_ids)}


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a method on a run with one metric (computations are cached where the app caches them)."""
    if args.metric not in METRICS:
        raise ConfigError(
            f"unknown metric {args.metric!r}{suggest(args.metric, METRICS)}; choose one of {', '.join(METRICS)}."
        )
    if args.retrain_seeds < 1:
        raise ConfigError(f"--retrain-seeds must be at least 1, got {args.retrain_seeds}.")
    check_method(args.method, parse_settings(args.set))
    ctx = open_run(args)
    out = {"run": ctx.run.key, "method": args.method, "metric": args.metric}
    out.update(
        {"lds": _lds, "mislabel": _mislabel, "pruning": _pruning, "counterfactual": _counterfactual}[
            args.metric
        ](ctx, args)
    )
    if args.json:
        print_json(out)
        return 0
    if args.metric == "lds":
        print(
            f"LDS of {args.method}: {out['mean']:.4f} (95% CI {out['ci_low']:.4f} .. {out['ci_high']:.4f}) over "
            f"{out['n_valid']} of {out['n_query']} queries; {args.subsets} subsets, alpha {args.alpha}"
        )
    elif args.metric == "mislabel":
        print(f"mislabel detection ({out['source']}):")
        rows = [{"score": f"self-influence · {args.method}", **out["result"]}, {"score": "own training loss",
                **out["baseline"]}]  # fmt: skip
        flat = [{**{k: v for k, v in r.items() if k != "recall_at"},
                 **{f"found@{k}": v for k, v in r["recall_at"].items()}} for r in rows]  # fmt: skip
        print(format_table(flat))
    else:
        print(format_table(out["rows"]))
    return 0


# -------------------------------------------------------------------------------------- mislabels
def cmd_mislabels(args: argparse.Namespace) -> int:
    """Rank suspected mislabels (self-influence of --method, else own training loss), or flag/unflag."""
    from tda_explorer.evaluation import mislabel_metrics, training_loss_scores
    from tda_explorer.evaluation.review import mislabel_ranking

    settings = parse_settings(args.set)
    if args.method:
        check_method(args.method, settings)
    if args.top < 1:
        raise ConfigError(f"--top must be at least 1, got {args.top}.")
    ctx = open_run(args)
    train, store = ctx.splits.train, ctx.ws.flags()
    if args.flag or args.unflag:
        return _flag_ops(ctx, args, train, store)
    if args.method:
        score, name = method_scores(ctx, args, "test").self_influence, f"self-influence · {args.method}"
    elif args.score in ("combined", "cleanlab"):
        score, name = _label_quality(ctx, args)
    else:
        score, name = training_loss_scores(ctx.run, train).numpy(), "own training loss"
    flipped = ctx.splits.flipped_ids
    rows = mislabel_ranking(score, train, store.get(ctx.run.key), args.top, args.hide_flagged, flipped)
    out = {"run": ctx.run.key, "score": name, "rows": rows}
    if flipped:
        out["metrics"] = mislabel_metrics(score, flipped, train.ids).to_dict()
    if args.json:
        print_json(out)
        return 0
    print(f"most suspicious training examples by {name} (higher = more suspicious):")
    print(format_table(rows, [c for c in rows[0] if c != "label"] if rows else None))
    if flipped:
        print(f"ROC-AUC against the injected flips: {out['metrics']['auc']:.3f}")
    return 0


def _label_quality(ctx, args):
    """The combined mislabel score or cleanlab's `[n_train]` and its name (out-of-fold retrainings, cached)."""
    from tda_explorer.evaluation.label_quality import cleanlab_scores, combined_mislabel_score
    from tda_explorer.evaluation.run_label_quality import CLEANLAB, COMBINED, cached_oof_probs

    run, train = ctx.run, ctx.splits.train
    update, bar = progress_bar("out-of-fold retraining")
    try:
        probs = cached_oof_probs(run, train, ctx.ws, executor=_executor(args), progress=update)
    finally:
        bar.close()
    if args.score == "combined":
        return combined_mislabel_score(run, train, probs), COMBINED
    return cleanlab_scores(probs, train.labels), CLEANLAB  # ConfigError naming the install when it is missing


def _flag_ops(ctx, args, train, store) -> int:
    if args.label is not None and args.label not in train.class_names:
        raise ConfigError(
            f"label {args.label!r} is not a class of this dataset; choose one of {list(train.class_names)}."
        )
    for example_id in (args.flag or []) + (args.unflag or []):
        find_id(example_id, train.ids, "training set")
    flagged = (
        store.flag_many(ctx.run.key, args.flag, suggested_label=args.label, note=args.note)
        if args.flag
        else 0
    )
    unflagged = sum(store.unflag(ctx.run.key, i) for i in args.unflag or [])
    out = {"run": ctx.run.key, "flagged": list(args.flag or []), "unflagged": list(args.unflag or []),
           "n_flagged": int(flagged), "n_unflagged": int(unflagged)}  # fmt: skip
    if args.json:
        print_json(out)
    else:
        print(f"flagged {out['n_flagged']}, unflagged {out['n_unflagged']} example(s) of run {ctx.run.key}")
    return 0


# ------------------------------------------------------------------------------------------ flags
def cmd_flags(args: argparse.Namespace) -> int:
    """List a run's flags, or export them (csv/json/parquet)."""
    from tda_explorer.cli_commands.common import resolve_run_key
    from tda_explorer.cli_commands.explore import flags_frame
    from tda_explorer.store import Workspace

    ws = Workspace(args.workspace)
    if args.export:
        export_format(args.export)
    key = resolve_run_key(ws, args.run)
    table = flags_frame(ws, key, args.all)
    path = write_table(table, args.export) if args.export else None
    if args.json:
        print_json({"run": key, "out": str(path) if path else None, "flags": table.to_dict(orient="records")})
    elif path:
        print(f"{len(table)} flag(s) written to {path}")
    else:
        print(format_table(table.to_dict(orient="records")) if len(table) else f"no flags on run {key}")
    return 0


# ------------------------------------------------------------------------------------------ prune
def cmd_prune(args: argparse.Namespace) -> int:
    """Choose the least useful training examples by validation scores; export the kept/removed table."""
    from tda_explorer.evaluation.mislabel import training_loss_scores
    from tda_explorer.evaluation.review import prune_table

    if (args.fraction is None) == (args.threshold is None):
        raise ConfigError("give exactly one of --fraction (e.g. 0.1) or --threshold (a usefulness score).")
    if args.rule in ITERATIVE_RULES and args.fraction is None:
        raise ConfigError(
            f"the iterative rule {args.rule!r} removes a fraction in rounds: give a fraction, not a threshold."
        )
    if args.rule in ITERATIVE_RULES and args.split != "val":
        raise ConfigError(
            f"the iterative rule {args.rule!r} re-scores the validation set after each round; "
            f"use --split val (got {args.split!r}), or a one-shot rule for --split {args.split}."
        )
    if args.export:
        export_format(args.export)
    check_method(args.method, parse_settings(args.set))
    ctx = open_run(args)
    result = method_scores(ctx, args, args.split)
    if args.rule in ITERATIVE_RULES or args.rule == "harm_mislabel":  # retrains: evaluation.iterative_pruning
        from tda_explorer.backend.usefulness import removal_mask
        from tda_explorer.evaluation.iterative_pruning import run_rule_usefulness
        from tda_explorer.store.exports import export_table

        update, bar = progress_bar(args.rule)
        with bar:
            useful = run_rule_usefulness(ctx.run, ctx.splits, result.scores, args.method, parse_settings(args.set),
                                         args.rule, args.fraction, ctx.ws, _executor(args), update)  # fmt: skip
        train = ctx.splits.train
        table = export_table(train.ids, train.labels.numpy(), train.class_names, useful,
                             removal_mask(useful, args.fraction, args.threshold), ctx.ws.flags().get(ctx.run.key))  # fmt: skip
    else:
        own_loss = (
            training_loss_scores(ctx.run, ctx.splits.train).numpy() if args.rule == "harm_loss" else None
        )
        table = prune_table(result.scores, ctx.splits.train, ctx.ws.flags().get(ctx.run.key), args.fraction,
                            args.threshold, rule=args.rule, own_loss=own_loss)  # fmt: skip
    written = table if args.only == "all" else table[table["status"] == args.only]
    path = write_table(written, args.export) if args.export else None
    removed = table[table["status"] == "removed"].sort_values("score")
    per_class = {str(c): int(n) for c, n in removed["class_name"].value_counts().sort_index().items()}
    out = {"run": ctx.run.key, "method": args.method, "score_key": result.key, "n_train": len(table),
           "n_removed": len(removed), "removed_per_class": per_class, "out": str(path) if path else None,
           "removed": removed["id"].tolist()}  # fmt: skip
    if args.json:
        print_json(out)
        return 0
    print(f"remove {len(removed)} of {len(table)} training examples (least useful to the {args.split} queries "
          f"by {args.method}); per class: {per_class}")  # fmt: skip
    print(format_table(removed.head(10).to_dict(orient="records"), ["id", "class_name", "score", "flagged"]))
    if path:
        print(f"{len(written)} rows ({args.only}) written to {path}")
    return 0


# ------------------------------------------------------------------------------------ registration
def add_commands(sub) -> None:
    """Register evaluate, mislabels, flags and prune on the CLI's subparsers."""
    v = sub.add_parser(
        "evaluate",
        help="LDS, mislabel detection, pruning curve or counterfactual test",
        description=textwrap.fill(
            "lds: rank correlation of summed scores with retrained losses on random subsets (ground "
            "truth cached, shared by all methods); mislabel: ROC-AUC of self-influence for flipped labels (the "
            "run's own flips, else --noise flipped and a run retrained); pruning: test accuracy after removing "
            "the least useful training examples (validation scores) vs random removal (curve cached); "
            "counterfactual: prediction flips after removing a query's top-k proponents vs k random examples.",
            100,
        ),
    )
    add_run_args(v, method=True)
    v.add_argument("--metric", required=True, metavar="|".join(METRICS), help="what to measure")
    v.add_argument("--subsets", type=int, default=20, help="lds: random subsets M (default 20; app 50)")
    v.add_argument("--alpha", type=float, default=0.5, help="lds: subset fraction (default 0.5)")
    v.add_argument(
        "--retrain-seeds",
        type=int,
        default=1,
        help="retraining seeds R (default 1; counterfactual: the run's first R)",
    )
    v.add_argument("--noise", type=float, default=0.1, help="mislabel: labels flipped for a clean run (0.1)")
    v.add_argument("--noise-seed", type=int, default=0, help="mislabel: seed of the flips (default 0)")
    v.add_argument("--largest", type=float, default=0.3, help="pruning: largest fraction removed (0.3)")
    v.add_argument("--step", type=float, default=0.1, help="pruning: fraction step (default 0.1)")
    v.add_argument("--queries", type=int, default=3, help="counterfactual: first n test queries (default 3)")
    v.add_argument("--ks", type=int, nargs="+", default=[10], help="counterfactual: removals k (default 10)")
    v.add_argument("--workers", type=int, help="local worker processes for retraining (default $TDA_WORKERS)")
    v.set_defaults(func=cmd_evaluate)

    m = sub.add_parser("mislabels", help="rank suspected mislabels; --flag / --unflag training examples")
    add_run_args(m, method="optional")
    m.add_argument(
        "--score", choices=("loss", "combined", "cleanlab"), default="loss",
        help="without --method: own training loss (default), the combined mislabel score or cleanlab's "
        "(both from 15 out-of-fold retrainings, cached)",
    )  # fmt: skip
    m.add_argument("--workers", type=int, help="local worker processes for retraining (default $TDA_WORKERS)")
    m.add_argument("--top", type=int, default=20, help="rows shown (default 20)")
    m.add_argument("--hide-flagged", action="store_true", help="leave out examples flagged already")
    m.add_argument("--flag", action="append", metavar="ID", help="flag this training example (repeatable)")
    m.add_argument("--label", metavar="L", help="with --flag: the suggested (correct) class name")
    m.add_argument("--note", default="", help="with --flag: a note")
    m.add_argument("--unflag", action="append", metavar="ID", help="unflag this example (note kept)")
    m.set_defaults(func=cmd_mislabels)

    f = sub.add_parser("flags", help="list a run's flags or export them (csv/json/parquet)")
    add_run_args(f)
    f.add_argument("--export", metavar="FILE", help="write id, flagged, suggested_label, note, updated_at")
    f.add_argument("--all", action="store_true", help="include unflagged rows (their notes are kept)")
    f.set_defaults(func=cmd_flags)

    p = sub.add_parser(
        "prune",
        help="remove the least useful training examples; export the kept/removed table",
        description=textwrap.fill(
            "Usefulness = mean score over the validation queries (positive = helps). The export "
            "has the app's columns: id, label, class_name, score (usefulness), flagged, suggested_label, note, "
            "status (kept|removed); read it back with tda_explorer.store.exports.read_export / kept_ids.",
            100,
        ),
    )
    add_run_args(p, method=True)
    p.add_argument("--fraction", type=float, help="fraction of the training set to remove, e.g. 0.1")
    p.add_argument("--threshold", type=float, help="remove examples whose usefulness is below this")
    p.add_argument("--rule", default=DEFAULT_PRUNING_RULE,
                   choices=[r for r in (*PRUNING_RULES, *ITERATIVE_RULES) if r != "normalised"],
                   help=f"pruning rule (default {DEFAULT_PRUNING_RULE}, the benchmark's best; see "
                   "evaluation.pruning): all but sum rank within each class (scores are then ranks in [0, 1]); "
                   "iterative_* retrain and re-score every 2.5%% (evaluation.iterative_pruning)")  # fmt: skip
    p.add_argument("--split", default="val", choices=["val", "test"], help="queries (default val)")
    p.add_argument("--workers", type=int, help="local worker processes for the iterative rules' retraining")
    p.add_argument("--export", metavar="FILE", help="write the table (.csv, .json or .parquet)")
    p.add_argument("--only", default="all", choices=["all", "kept", "removed"], help="rows written (all)")
    p.set_defaults(func=cmd_prune)
