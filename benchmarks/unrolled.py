"""Unrolled (exact replay) benchmark: LDS under fixed-seed and fresh-seed ground truth, and its cost.

    python -m benchmarks.unrolled                      # 100 queries, M = 100 subsets (reduced; ~30 min busy box)
    python -m benchmarks.unrolled --queries 500        # all test queries (the issue's setting)
    python -m benchmarks.unrolled --queries 20 --subsets 30 --no-baselines   # a smoke run
    python -m benchmarks.unrolled --methods trak-10,source   # some rows only, merged into the JSON
    python -m benchmarks.unrolled --arch logreg               # the logistic-regression row (its own JSON)

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
Writes `benchmarks/results/unrolled.json` (`--arch logreg`: the same on logistic regression with
`default_train_config("logreg")`, into `unrolled_logreg.json`) and prints a Markdown table. The machine may be shared: the
1-minute load average is recorded next to every timing.
"""

from __future__ import annotations

import argparse
import copy
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


def results_path(arch: str) -> Path:
    """Where the results of `arch` go: `unrolled.json` for the MLP, `unrolled_<arch>.json` otherwise."""
    return RESULTS if arch == "mlp" else RESULTS.with_name(f"unrolled_{arch}.json")


def run_benchmark(
    n_query: int,
    n_subsets: int,
    workers: int,
    baselines: bool,
    truth_only: bool = False,
    only: tuple[str, ...] = (),
    save=None,
    arch: str = "mlp",
) -> dict:
    from tda_explorer.attributors import make_attributor
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.evaluation import LDSConfig, compute_lds_truth, lds_score
    from tda_explorer.models import default_model_config
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, default_train_config, train_model, train_run

    torch.set_num_threads(1)
    ws, executor = Workspace(WORKSPACE), LocalExecutor(workers)
    splits = load_dataset(DatasetSpec(name="mnist5k"))
    model_cfg, train_cfg = default_model_config(arch), default_train_config(arch)
    queries = splits.test.subset(range(n_query))
    out: dict = {"arch": arch, "n_train": len(splits.train), "n_query": n_query, "n_subsets": n_subsets}

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

    if not only or "unrolled" in only:
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
    methods = {k: v for k, v in methods.items() if not only or any(k.startswith(o) for o in only)}
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
        if save is not None:
            if label == "unrolled":
                add_unrolled_costs(row, out["training_once"], n_query)
            save(out | {"methods": rows})
        log(
            f"{label}: LDS fixed {row['lds_fixed']['mean']:.3f} fresh {row['lds_fresh']['mean']:.3f} ({row['seconds']} s)"
        )
        del a
    if "unrolled" in rows and "per_query_cpu_seconds" not in rows["unrolled"]:
        add_unrolled_costs(rows["unrolled"], out["training_once"], n_query)  # vs this invocation's training
    out["methods"] = rows
    return out


def add_unrolled_costs(u: dict, once: dict, n_query: int) -> None:
    """Per-query CPU seconds and the ratios to one training (wall and CPU), into the unrolled row `u`."""
    u["training_once"] = once
    u["per_query_cpu_seconds"] = round(u["score_cpu_seconds"] / n_query, 3)
    u["cpu_vs_training"] = round(u["cpu_seconds"] / once["cpu_seconds"], 1)
    u["wall_vs_training"] = round(u["seconds"] / once["seconds"], 1)
    # all 500 queries at the measured per-query rate (equal to the measurement when n_query = 500)
    u["all_500_cpu_vs_training"] = round(
        (u["fit_cpu_seconds"] + u["per_query_cpu_seconds"] * 500) / once["cpu_seconds"], 1
    )


def markdown(res: dict) -> str:
    u, one = res["methods"].get("unrolled"), res.get("unrolled_one_query")
    once = (u or {}).get("training_once")
    lines = [
        f"MNIST 5k {'MLP' if res.get('arch', 'mlp') == 'mlp' else res['arch']} (default recipe), seed 0, first {res['n_query']} test queries, M = {res['n_subsets']} half "
        "subsets, fixed-seed and fresh-seed ground truth"
        + (
            f"; training the model once: {once['seconds']} s wall / {once['cpu_seconds']} s CPU "
            f"(load {once['load_1m']})."
            if once
            else "."
        ),
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
    lines += (
        []
        if not (u and one)
        else [
            "",
            f"unrolled cost: {u['per_query_cpu_seconds']} CPU s per query (batched reverse pass); "
            f"{res['n_query']} queries = {u['cpu_vs_training']} x training in CPU time ({u['wall_vs_training']} x in wall "
            f"time); all 500 at that rate = {u['all_500_cpu_vs_training']} x training; one query alone (fit + score) "
            f"{one['seconds']} s wall / {one['cpu_seconds']} s CPU.",
        ]
    )
    lines += [f"\nNote: {note}" for note in res.get("notes", [])]
    lin = res.get("linearity")
    if lin:
        lines += [
            "",
            "Linear regime (float64 replay, 8 queries): relative error of `-eps dm/dw_i` against retraining",
        ]
        lines += [
            "with `w_i = 1 - eps`: "
            + "; ".join(
                f"example {r['example']} eps {r['eps']:g}: {r['rel_error']:.2g} (corr {r['corr']:.2f})"
                for r in lin["perturbations"]
            )
            + "."
        ]
        lines += [
            f"LDS of the first {lin['setting']['n_query']} queries, M = {lin['setting']['n_subsets']}: "
            + ", ".join(f"{k}: {v['mean']:.3f}" for k, v in lin["lds"].items())
            + "."
        ]
    d = res.get("dtda")
    if d:
        u, i = d["unrolled"], d["influence_same_pairs"]
        lines += [
            "",
            f"d-TDA ({d['setting']}, {len(d['seeds'])} seeds, {u['n_pairs']} pairs), Pearson of predicted vs retrained "
            f"mean shift of the query loss: unrolled base {u['pearson']:.3f} (fixed-seed retraining "
            f"{u['pearson_fixed_seed_truth']:.3f}), EK-FAC influence base on the same pairs {i['pearson']:.3f} "
            f"(fixed-seed {i['pearson_fixed_seed_truth']:.3f}).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=100, help="test queries attributed (first n of 500)")
    p.add_argument("--subsets", type=int, default=100, help="LDS subsets M")
    p.add_argument("--workers", type=int, default=1, help="retraining processes")
    p.add_argument(
        "--arch", default="mlp", choices=("mlp", "logreg"), help="the model (default recipe of each)"
    )
    p.add_argument("--no-baselines", action="store_true", help="only unrolled (no EK-FAC / Source / TRAK-10)")
    p.add_argument(
        "--methods", default="", help="comma-separated row labels (prefixes) to compute; default all"
    )
    p.add_argument("--dtda", action="store_true", help="only the d-TDA validation (merged into the JSON)")
    p.add_argument(
        "--linearity", action="store_true", help="only the linear-regime check (merged into the JSON)"
    )
    p.add_argument(
        "--truth-only",
        action="store_true",
        help="train the run and the two ground truths (cached in shards of 10), stop",
    )
    args = p.parse_args(argv)
    path = results_path(args.arch)
    started = time.perf_counter()
    only = tuple(m for m in (args.methods or "").split(",") if m)
    if args.dtda or args.linearity:
        doc = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}  # both checks are of the MLP
        key = "dtda" if args.dtda else "linearity"
        from benchmarks.unrolled_checks import dtda_validation, linearity

        doc[key] = dtda_validation(workers=args.workers) if args.dtda else linearity()
        write(doc, RESULTS)
        print(json.dumps(doc[key], indent=1))
        return

    def save(partial: dict) -> None:  # after every row, so an interrupted run keeps what it measured
        res = copy.deepcopy(partial)
        if path.exists():  # keep rows of the same setting that this invocation did not recompute
            old = json.loads(path.read_text())
            if (old.get("n_query"), old.get("n_subsets")) == (args.queries, args.subsets):
                kept = {k: v for k, v in old.get("methods", {}).items() if k not in res.get("methods", {})}
                res["methods"] = kept | res.get("methods", {})
                res.setdefault("unrolled_one_query", old.get("unrolled_one_query"))
                for key in ("dtda", "linearity", "notes"):
                    if key in old:
                        res[key] = old[key]
        res |= {
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        }
        write(res, path)

    res = run_benchmark(
        args.queries,
        args.subsets,
        args.workers,
        not args.no_baselines,
        args.truth_only,
        only,
        save,
        args.arch,
    )
    if not args.truth_only:
        save(res)
        print(json.loads(path.read_text())["markdown"])


def write(doc: dict, path: Path) -> None:
    """Write the results JSON atomically."""
    from tda_explorer.store.atomic import atomic_write_text

    if "methods" in doc:
        doc["markdown"] = markdown(doc)
    atomic_write_text(path, json.dumps(doc, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
