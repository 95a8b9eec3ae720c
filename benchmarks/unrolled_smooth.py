"""Why exact unrolled attribution is (not) predictive: LDS against subset fraction and training recipe.

    python -m benchmarks.unrolled_smooth                                  # both recipes, all fractions
    python -m benchmarks.unrolled_smooth --recipes mlp-smooth --alphas 0.99 --methods unrolled

MNIST 5k MLP, seed 0, first `--queries` test queries. For each recipe ("default" =
`default_train_config("mlp")`, or a name of `attributors.unrolled.smooth.SMOOTH_RECIPES`):
its metasmoothness (three trainings, `smooth.metasmoothness`), its test accuracy, and the LDS of
`unrolled`, EK-FAC influence and TRAK-10 against fixed-seed ground truths that remove 1% / 5% / 50% of
the training data (alpha = kept fraction 0.99 / 0.95 / 0.5, M = `--subsets`, subset seed 0) and a
fresh-seed ground truth at alpha = 0.5. All methods are scored against the same truths. Truths are
cached in `benchmarks/.workspace`. Writes `benchmarks/results/unrolled_smooth.json` (rows merged by
recipe and method, saved as they finish).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime

import torch

from benchmarks.console import load_1m, log, progress_line
from benchmarks.unrolled import BASELINES, RESULTS, WORKSPACE, restrict

OUT = RESULTS.with_name("unrolled_smooth.json")


def recipe(name: str):
    from tda_explorer.attributors.unrolled.smooth import smooth_train_config
    from tda_explorer.training import default_train_config

    return default_train_config("mlp") if name == "default" else smooth_train_config(name)


def run_recipe(
    name: str, alphas, n_subsets: int, n_query: int, methods, workers: int, save, fresh: bool = True
) -> None:
    from tda_explorer.attributors import make_attributor
    from tda_explorer.attributors.unrolled.smooth import metasmoothness
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.evaluation import LDSConfig, compute_lds_truth, lds_score
    from tda_explorer.models import MLPConfig
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, train_run

    torch.set_num_threads(1)
    ws, executor = Workspace(WORKSPACE), LocalExecutor(workers)
    splits = load_dataset(DatasetSpec(name="mnist5k"))
    model_cfg, train_cfg = MLPConfig(), recipe(name)
    queries = splits.test.subset(range(n_query))
    row: dict = {"train_config": train_cfg.to_dict(), "n_subsets": n_subsets}
    seeds = range(10 if any(m.startswith("trak") for m in methods) else 1)
    run = train_run(splits, model_cfg, train_cfg, seeds, ws, executor, progress_line(f"train {name}"))
    row["test_acc_seed0"] = run.metrics[0]["test_acc"]
    log(f"{name}: metasmoothness")
    row["metasmoothness"] = metasmoothness(model_cfg, train_cfg, splits.train, queries).to_dict()
    log(f"{name}: {row['metasmoothness']}")
    truths = {}
    for alpha, mode in [(a, "fixed") for a in alphas] + [(0.5, "fresh")] * fresh:
        cfg = LDSConfig(n_subsets=n_subsets, alpha=alpha, seeds=(0,), subset_seed=0, shard_size=10, mode=mode)
        log(f"{name}: truth alpha={alpha} {mode}")
        truth = compute_lds_truth(
            splits.train, queries, model_cfg, train_cfg, cfg, ws, executor, progress_line(f"truth {alpha}")
        )
        truths[f"alpha={alpha} {mode}"] = restrict(truth, n_query)
    row["methods"] = {}
    for label in methods:
        attr_name, settings = ("unrolled", {}) if label == "unrolled" else BASELINES[label]
        a = make_attributor(attr_name, **settings)
        load, t0, c0 = load_1m(), time.perf_counter(), time.process_time()
        scores = a.fit(run, splits.train).score(queries)
        r = {"seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(time.process_time() - c0, 1)}
        r |= {"load_1m": load} | {k: lds_score(scores, t).to_dict() for k, t in truths.items()}
        row["methods"][label] = r
        log(
            f"{name} {label}: "
            + ", ".join(f"{k} {v['mean']:.3f}" for k, v in r.items() if isinstance(v, dict))
        )
        save(name, row)


def measure_cost(name: str, save) -> None:
    """CPU and wall seconds of training once, of one query (replay + reverse pass), of 32 queries batched."""
    from tda_explorer.attributors import make_attributor
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.models import MLPConfig
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, train_model, train_run

    torch.set_num_threads(1)
    splits = load_dataset(DatasetSpec(name="mnist5k"))
    model_cfg, train_cfg = MLPConfig(), recipe(name)
    run = train_run(splits, model_cfg, train_cfg, (0,), Workspace(WORKSPACE), LocalExecutor(1))

    def timed(fn) -> dict:
        load, t0, c0 = load_1m(), time.perf_counter(), time.process_time()
        fn()
        return {
            "seconds": round(time.perf_counter() - t0, 2),
            "cpu_seconds": round(time.process_time() - c0, 2),
        } | {"load_1m": load}

    cost = {"training_once": timed(lambda: train_model(model_cfg, train_cfg, splits.train, 0))}
    a = make_attributor("unrolled")
    cost["fit"] = timed(lambda: a.fit(run, splits.train))
    cost["one_query_score"] = timed(lambda: a.score(splits.test.subset([0])))
    cost["32_queries_score"] = timed(lambda: a.score(splits.test.subset(range(32))))
    once, per_query = cost["training_once"]["cpu_seconds"], cost["32_queries_score"]["cpu_seconds"] / 32
    cost["one_query_cpu_seconds"] = round(
        cost["fit"]["cpu_seconds"] + cost["one_query_score"]["cpu_seconds"], 2
    )
    cost["all_500_cpu_vs_training"] = round((cost["fit"]["cpu_seconds"] + 500 * per_query) / once, 1)
    log(f"{name} cost: {cost}")
    save(name, {"cost": cost, "methods": {}})


def markdown(doc: dict) -> str:
    lines = [
        f"MNIST 5k MLP, seed 0, first {doc['n_query']} test queries, M subsets per truth "
        "(alpha = kept fraction; fixed-seed unless marked fresh).",
        "",
    ]
    for name, row in doc["recipes"].items():
        ms = row.get("metasmoothness")
        lines.append(
            f"Recipe `{name}`"
            + (
                ""
                if ms is None
                else (
                    f" (M = {row.get('n_subsets', doc.get('n_subsets'))}, test acc {row['test_acc_seed0']:.3f}, metasmoothness "
                    f"{ms['score']:.2f}, query-loss difference corr {ms['loss_corr']:.2f}):"
                )
            )
        )
        keys = [k for k in next(iter(row["methods"].values()), {}) if k.startswith("alpha")]
        if row["methods"]:
            lines += ["", "| method | " + " | ".join(keys) + " | CPU s |", "|---" * (len(keys) + 2) + "|"]
        for label, r in row["methods"].items():
            cells = [f"{r[k]['mean']:.3f} [{r[k]['ci_low']:.2f}, {r[k]['ci_high']:.2f}]" for k in keys]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {r['cpu_seconds']} |")
        c = row.get("cost")
        if c:
            lines.append("")
            lines.append(
                f"Cost (CPU s, one thread; load {c['fit']['load_1m']}): training once {c['training_once']['cpu_seconds']}; "
                f"one query = replay {c['fit']['cpu_seconds']} + reverse pass {c['one_query_score']['cpu_seconds']} "
                f"= {c['one_query_cpu_seconds']}; 32 queries batched {c['32_queries_score']['cpu_seconds']}; "
                f"all 500 at that rate = {c['all_500_cpu_vs_training']} x training."
            )
        lines.append("")
    lines += [f"Note: {note}\n" for note in doc.get("notes", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="default,mlp-smooth")
    p.add_argument("--alphas", default="0.99,0.95,0.5")
    p.add_argument("--subsets", type=int, default=40)
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--methods", default="unrolled,influence/ekfac,trak-10")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cost", action="store_true", help="only the cost measurement of each recipe (merged)")
    p.add_argument("--no-fresh", action="store_true", help="skip the fresh-seed truth at alpha = 0.5")
    args = p.parse_args(argv)
    alphas = [float(a) for a in args.alphas.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m != "unrolled" and m not in BASELINES]
    if bad:
        p.error(f"unknown methods {bad}; known: unrolled, {', '.join(BASELINES)}")

    def save(name: str, row: dict) -> None:
        doc = json.loads(OUT.read_text()) if OUT.exists() else {}
        if doc.get("n_query") != args.queries:
            doc = {"n_query": args.queries, "recipes": {}}
        old = doc["recipes"].get(name, {})
        row = row | {"methods": row.get("methods", {})}
        row = old | row | {"methods": old.get("methods", {}) | row["methods"]}
        doc["recipes"][name] = row
        doc["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
        doc["markdown"] = markdown(doc)
        tmp = OUT.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(OUT)

    for name in args.recipes.split(","):
        if args.cost:
            measure_cost(name, save)
            continue
        run_recipe(name, alphas, args.subsets, args.queries, methods, args.workers, save, not args.no_fresh)
    print(json.loads(OUT.read_text())["markdown"])


if __name__ == "__main__":
    main(sys.argv[1:])
