"""Unrolled (exact replay) benchmark: LDS under fixed-seed and fresh-seed ground truth, and its cost.

    python -m benchmarks.unrolled                      # 100 queries, M = 100 subsets (reduced; ~30 min busy box)
    python -m benchmarks.unrolled --queries 500        # all test queries (the issue's setting)
    python -m benchmarks.unrolled --queries 20 --subsets 30 --no-baselines   # a smoke run

MNIST 5k (4,000 train images), the default MLP recipe (`MLPConfig()`, `default_train_config("mlp")`:
SGD momentum 0.9, lr 0.05 cosine, wd 1e-4, batch 64, 15 epochs = 945 steps), explained at seed 0. Two
LDS ground truths over the same M half subsets (alpha = 0.5, subset seed 0, one retraining each), both
cached in `benchmarks/.workspace` for all 500 test queries:

- fixed: seed 0's run replayed with the removed examples weighted 0 in their batches (same init, batch
  order, no dropout here) -- this model's counterfactual, what `unrolled` differentiates;
- fresh: each subset retrained as a new run of seed 0 (batches re-drawn over the kept examples) -- the
  suites' usual ground truth (`benchmarks.run`), where run-to-run noise is part of the target.

Methods on the first `--queries` test queries: `unrolled` (seed 0), and as baselines EK-FAC influence
(seed 0), Source (L = 3, seed 0) and TRAK-10 (count sketch, k = 2,048, seeds 0-9), each scored against both
truths. Cost: wall seconds of `fit` + `score`, per query, and against the wall time of training the model
once (measured here, same process, one thread); "one query" = fit + score of the first query alone.
Writes `benchmarks/results/unrolled.json` and prints a Markdown table. The machine may be shared: the
1-minute load average is recorded next to every timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from benchmarks.console import load_1m, log, progress_line

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = ROOT / "benchmarks" / ".workspace"
RESULTS = ROOT / "benchmarks" / "results" / "unrolled.json"
BASELINES = {
    "influence/ekfac": ("influence", {"solver": "ekfac"}),
    "source (L=3)": ("source", {"segments": 3}),
    "trak-10": ("trak", {"proj_dim": 2048, "n_models": 10, "proj_type": "sjlt"}),
}


def restrict(truth, n_query: int):
    """The ground truth restricted to its first `n_query` queries."""
    return dataclasses.replace(
        truth,
        losses=truth.losses[:, :n_query],
        seed_losses=truth.seed_losses[:, :, :n_query],
        logits=truth.logits[:, :, :n_query],
        query_ids=truth.query_ids[:n_query],
    )


def timed(fn):
    """`(result, wall seconds, process CPU seconds, 1-min load)`. One thread: the CPU seconds are about the
    wall time the step would take on an idle core (the box is shared; both are recorded)."""
    load, t0, c0 = load_1m(), time.perf_counter(), time.process_time()
    out = fn()
    return out, round(time.perf_counter() - t0, 2), round(time.process_time() - c0, 2), load


def run_benchmark(
    n_query: int, n_subsets: int, workers: int, baselines: bool, truth_only: bool = False
) -> dict:
    from tda_explorer.attributors import make_attributor
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.evaluation import LDSConfig, compute_lds_truth, lds_score
    from tda_explorer.models import MLPConfig
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, default_train_config, train_model, train_run

    torch.set_num_threads(1)
    ws, executor = Workspace(WORKSPACE), LocalExecutor(workers)
    splits = load_dataset(DatasetSpec(name="mnist5k"))
    model_cfg, train_cfg = MLPConfig(), default_train_config("mlp")
    queries = splits.test.subset(range(n_query))
    out: dict = {"n_train": len(splits.train), "n_query": n_query, "n_subsets": n_subsets}

    log("training seed 0 once (timed, in-process)")
    _, wall, cpu, load = timed(lambda: train_model(model_cfg, train_cfg, splits.train, 0))
    out["training_once"] = {"seconds": wall, "cpu_seconds": cpu, "load_1m": load}
    seeds = range(10 if baselines else 1)
    run = train_run(splits, model_cfg, train_cfg, seeds, ws, executor, progress_line("train"))
    out["run"], out["test_acc_seed0"] = run.key, run.metrics[0]["test_acc"]

    truths = {}
    for mode in ("fixed", "fresh"):
        lds_cfg = LDSConfig(
            n_subsets=n_subsets, alpha=0.5, seeds=(0,), subset_seed=0, shard_size=10, mode=mode
        )
        log(f"LDS ground truth ({mode} seed)")
        truth, secs, _, _ = timed(
            lambda c=lds_cfg, m=mode: compute_lds_truth(
                splits.train, splits.test, model_cfg, train_cfg, c, ws, executor, progress_line(f"truth {m}")
            )
        )
        truths[mode] = restrict(truth, n_query)
        out[f"truth_{mode}_seconds"] = secs
    if truth_only:
        return out

    log("unrolled: one query")
    single = make_attributor("unrolled")
    _, fit_s, fit_c, load = timed(lambda: single.fit(run, splits.train))
    _, q1_s, q1_c, _ = timed(lambda: single.score(queries.subset([0])))
    out["unrolled_one_query"] = {
        "seconds": round(fit_s + q1_s, 2),
        "cpu_seconds": round(fit_c + q1_c, 2),
        "fit_seconds": fit_s,
        "load_1m": load,
    }
    rows: dict = {}
    methods = {"unrolled": ("unrolled", {})} | (BASELINES if baselines else {})
    for label, (name, settings) in methods.items():
        log(f"{label}: {n_query} queries")
        a = make_attributor(name, progress=progress_line(label), **settings)
        _, fit_s, fit_c, load = timed(lambda a=a: a.fit(run, splits.train))
        scores, score_s, score_c, _ = timed(lambda a=a: a.score(queries))
        row = {
            "seconds": round(fit_s + score_s, 2),
            "cpu_seconds": round(fit_c + score_c, 2),
            "fit_seconds": fit_s,
            "fit_cpu_seconds": fit_c,
            "score_seconds": score_s,
            "score_cpu_seconds": score_c,
            "load_1m": load,
        }
        for mode, truth in truths.items():
            row[f"lds_{mode}"] = lds_score(scores, truth).to_dict()
        rows[label] = row
        log(
            f"{label}: LDS fixed {row['lds_fixed']['mean']:.3f} fresh {row['lds_fresh']['mean']:.3f} ({row['seconds']} s)"
        )
        del a
    u, once = rows["unrolled"], out["training_once"]
    u["per_query_cpu_seconds"] = round(u["score_cpu_seconds"] / n_query, 3)
    u["cpu_vs_training"] = round(u["cpu_seconds"] / once["cpu_seconds"], 1)
    u["wall_vs_training"] = round(u["seconds"] / once["seconds"], 1)
    # all 500 queries at the measured per-query rate (equal to the measurement when n_query = 500)
    u["all_500_cpu_vs_training"] = round(
        (u["fit_cpu_seconds"] + u["per_query_cpu_seconds"] * 500) / once["cpu_seconds"], 1
    )
    out["methods"] = rows
    return out


def markdown(res: dict) -> str:
    once, one = res["training_once"], res["unrolled_one_query"]
    lines = [
        f"MNIST 5k MLP (default recipe), seed 0, first {res['n_query']} test queries, M = {res['n_subsets']} half "
        f"subsets; training the model once: {once['seconds']} s wall / {once['cpu_seconds']} s CPU "
        f"(load {once['load_1m']}).",
        "",
        "| method | LDS fixed-seed [95% CI] | LDS fresh-seed [95% CI] | fit + score wall (s) | CPU (s) | load |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in res["methods"].items():
        cells = [
            f"{r[k]['mean']:.3f} [{r[k]['ci_low']:.3f}, {r[k]['ci_high']:.3f}]"
            for k in ("lds_fixed", "lds_fresh")
        ]
        lines.append(
            f"| {label} | {cells[0]} | {cells[1]} | {r['seconds']} | {r['cpu_seconds']} | {r['load_1m']} |"
        )
    u = res["methods"]["unrolled"]
    lines += [
        "",
        f"unrolled cost: {u['per_query_cpu_seconds']} CPU s per query (batched reverse pass); "
        f"{res['n_query']} queries = {u['cpu_vs_training']} x training in CPU time ({u['wall_vs_training']} x in wall "
        f"time); all 500 at that rate = {u['all_500_cpu_vs_training']} x training; one query alone (fit + score) "
        f"{one['seconds']} s wall / {one['cpu_seconds']} s CPU.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=100, help="test queries attributed (first n of 500)")
    p.add_argument("--subsets", type=int, default=100, help="LDS subsets M")
    p.add_argument("--workers", type=int, default=1, help="retraining processes")
    p.add_argument("--no-baselines", action="store_true", help="only unrolled (no EK-FAC / Source / TRAK-10)")
    p.add_argument(
        "--truth-only",
        action="store_true",
        help="train the run and the two ground truths (cached in shards of 10), stop",
    )
    args = p.parse_args(argv)
    started = time.perf_counter()
    res = run_benchmark(args.queries, args.subsets, args.workers, not args.no_baselines, args.truth_only)
    if args.truth_only:
        return
    res |= {
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "markdown": markdown(res),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(RESULTS)
    print(res["markdown"])


if __name__ == "__main__":
    main(sys.argv[1:])
