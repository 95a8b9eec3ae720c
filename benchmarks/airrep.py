"""AirRep benchmark on mnist5k + mlp: LDS, group LDS (attention vs sum pooling), inference cost.

    python -m benchmarks.airrep --quick   # < 10 min on 2 busy cores once the shared caches exist
    python -m benchmarks.airrep --full

Setting: MNIST 5k (4,000 train / 500 val / 500 test), the default MLP and its default training
config; LDS ground truth = 100 random half subsets (seed 0), one retraining seed, the 500 test queries
(`tda_explorer.evaluation.compute_lds_truth`, shared with the other benchmarks through the workspace).

Methods:
- AirRep (attention pooling) and its ablation (the encoder trained and evaluated with sum pooling),
  trained on subsets drawn with another seed (disjoint from the LDS subsets, asserted) and labelled on
  the 500 validation queries; the test queries are never seen in training.
- TRAK over 10 models (the run's 10 seeds; dense Rademacher projection k = 256, the largest whose random
  matrix (235k params x k) stays cached in memory: at k = 2048 it is regenerated for every chunk of 142
  examples, which takes hours on these CPUs), and the same with a count-sketch projection at k = 2,048
  (`proj_type="sjlt"`: sketched from the layers' ghost factors, no random matrix), influence functions
  (EK-FAC), RepSim. The targets are checked against both TRAK rows.

Metrics:
- per-example LDS: `lds_score(score(test), truth)` (prediction for subset j = sum of member scores);
- group LDS: `lds_groups(f, truth)` with `f[q, j] = score_groups(test, masks)` — AirRep's pooled
  `f(x, S_j)`; for the other methods the sum of scores (so their group LDS equals their LDS);
- inference: wall seconds to score the 500 test queries against the 4,000 training examples with a
  fitted attributor (AirRep: embed the queries + one matmul; TRAK: query gradients over 10 models,
  projection, kernel matmuls), median of repeats, with `os.getloadavg()` recorded next to it;
- one-time cost of AirRep (subset retraining + encoder training) and the break-even number of queries
  against TRAK-10: `(airrep_once - trak_once) / (trak_per_query - airrep_per_query)`, where
  `trak_once` = its fit (train featurisation) + training its 9 extra models.

Results: `benchmarks/results/airrep.json` (one entry per mode, `{"quick": ..., "full": ...}`) and a
Markdown table on stdout. Caches: `benchmarks/.workspace` (run, LDS truth, baselines' scores and
timings, AirRep data and encoders), so a rerun only re-measures the inference timings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.console import log
from tda_explorer.attributors import make_attributor
from tda_explorer.attributors.airrep.data import (
    SHARD_KIND,
    AirRepDataConfig,
    check_disjoint_subsets,
    data_config,
)
from tda_explorer.attributors.airrep.pooling import group_scores
from tda_explorer.attributors.scores import compute_scores
from tda_explorer.data import DatasetSpec, load_dataset
from tda_explorer.evaluation import LDSConfig, compute_lds_truth, lds_groups, lds_score
from tda_explorer.models import MLPConfig
from tda_explorer.store import Workspace, load_array, save_array
from tda_explorer.training import LocalExecutor, default_train_config, train_run

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "airrep.json"
WORKSPACE = ROOT / ".workspace"
N_MODELS = 10

BASELINES = {
    "trak-10": ("trak", {"n_models": N_MODELS, "proj_dim": 256, "proj_type": "rademacher"}),
    "trak-10 (sjlt, k 2048)": ("trak", {"n_models": N_MODELS, "proj_dim": 2048, "proj_type": "sjlt"}),
    "influence (ekfac)": ("influence", {"solver": "ekfac"}),
    "repsim": ("repsim", {}),
}
TIMED = ("trak-10", "trak-10 (sjlt, k 2048)")
#: One MLP retraining on 2,000 examples took ~1 s single-threaded when the machine was nearly idle
#: (measured at the start of this work); the shards' own timings are reported next to their load.
IDLE_RETRAIN_SECONDS = 1.0  # fitted here and timed per query; the others come from the shared score cache

#: AirRep settings per mode. The image backbone is the MLP option: on these 2 busy CPU cores the default
#: small CNN costs ~15-20 s per training step against ~1-4 s (every step re-embeds all 4,000 training
#: images with gradients), which would not fit the time budget.
ENCODER = {"image_backbone": "mlp", "dim": 128, "hidden": 256, "depth": 2}
MODES = {
    "quick": {
        "data": {"n_subsets": 256, "shard_size": 32},
        "training": {"epochs": 20, "patience": 8},
        "repeats": 3,
    },
    "full": {
        "data": {"n_subsets": 512, "shard_size": 32},
        "training": {"epochs": 40, "patience": 10},
        "repeats": 5,
    },
}


def progress_printer(what: str, every: float = 20.0):
    """A Progress callback printing at most every `every` seconds."""
    last = [0.0]

    def report(done: int, total: int, msg: str) -> None:
        now = time.perf_counter()
        if now - last[0] >= every or done == total:
            last[0] = now
            log(f"{what}: {done}/{total} {msg[:90]}")

    return report


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed(fn, repeats: int):
    """`(result of the last call, median seconds, all seconds, loadavg before)`."""
    load, times, out = loadavg(), [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times), times, load


@dataclass
class Baseline:
    scores: np.ndarray
    fit_seconds: float
    score_seconds: float | None
    score_times: list[float]
    loadavg: list[float]


def timed_baseline(ws: Workspace, run, splits, name: str, repeats: int) -> Baseline:
    """Fit a baseline and time `score(test)` (median of `repeats`); cached as kind "airrep_bench"."""
    method, settings = BASELINES[name]
    cfg = {"run": run.key, "method": method, "settings": settings, "queries": "test"}
    if ws.exists("airrep_bench", cfg):
        path = ws.open("airrep_bench", cfg)
        extra = ws.meta("airrep_bench", path.name)["extra"]
        return Baseline(load_array(path / "scores.npy"), **extra)
    attr = make_attributor(method, progress=progress_printer(name), **settings)
    load = loadavg()
    start = time.perf_counter()
    attr.fit(run, splits.train)
    fit_seconds = time.perf_counter() - start
    scores, med, times, _ = timed(lambda: attr.score(splits.test), repeats)
    extra = {"fit_seconds": fit_seconds, "score_seconds": med, "score_times": times, "loadavg": load}
    with ws.write("airrep_bench", cfg, extra=extra) as d:
        save_array(d, "scores", scores.numpy().astype(np.float32))
    return Baseline(scores.numpy(), **extra)


def cached_baseline(ws: Workspace, run, splits, name: str) -> Baseline:
    """Scores through the shared score cache (`attributors.scores.compute_scores`); not timed per query."""
    method, settings = BASELINES[name]
    load = loadavg()
    result = compute_scores(run, splits, method, settings, "test", ws, progress_printer(name))
    return Baseline(result.scores, result.seconds, None, [], load)


def shard_stats(ws: Workspace, splits, model_cfg, train_cfg, data_settings: dict) -> dict:
    """Wall seconds and load average of the retraining shards behind an AirRep data artifact."""
    cfg = AirRepDataConfig(**data_settings)
    base = {k: v for k, v in data_config(splits.train, splits.val, model_cfg, train_cfg, cfg).items()}
    del base["n_subsets"]
    secs, loads = [], []
    for a in range(0, cfg.n_subsets, cfg.shard_size):
        key = ws.key(SHARD_KIND, {**base, "subsets": [a, min(a + cfg.shard_size, cfg.n_subsets)]})
        extra = ws.meta(SHARD_KIND, key)["extra"]
        secs.append(extra["seconds"])
        loads.append(extra["loadavg"][0])
    return {
        "n_shards": len(secs),
        "seconds_per_subset": round(sum(secs) / cfg.n_subsets, 2),
        "mean_loadavg_1min": round(float(np.mean(loads)), 1),
        "retrain_seconds_per_subset_idle_reference": IDLE_RETRAIN_SECONDS,
    }


def summary(result) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.to_dict().items()}


@dataclass
class Setting:
    """The shared setting: workspace, executor, splits, the 10-seed run and the LDS ground truth."""

    ws: Workspace
    executor: LocalExecutor
    splits: object
    run: object
    truth: object
    description: dict


def setup(workspace: Path, workers: int) -> Setting:
    """Train (or load) the mnist5k MLP run over 10 seeds and the LDS ground truth (100 half subsets)."""
    torch.set_num_threads(2)
    ws = Workspace(workspace)
    (Path(ws.root) / ".gitignore").write_text("*\n")
    executor = LocalExecutor(workers)
    splits = load_dataset(DatasetSpec("mnist5k"))
    model_cfg, train_cfg = MLPConfig(), default_train_config("mlp")
    t0 = time.perf_counter()
    run = train_run(splits, model_cfg, train_cfg, range(N_MODELS), ws, executor, progress_printer("run"))
    log(f"run {run.key}: test acc {run.mean_metric('test_acc'):.3f} ({time.perf_counter() - t0:.0f} s)")
    lds_cfg = LDSConfig(n_subsets=100, alpha=0.5, seeds=(0,), subset_seed=0)
    truth = compute_lds_truth(
        splits.train, splits.test, model_cfg, train_cfg, lds_cfg, ws, executor, progress_printer("LDS truth")
    )
    description = {
        "dataset": "mnist5k",
        "model": model_cfg.to_dict(),
        "training": train_cfg.to_dict(),
        "n_train": len(splits.train),
        "n_test_queries": len(splits.test),
        "n_label_queries": len(splits.val),
        "lds": lds_cfg.key_dict(),
        "torch_threads": torch.get_num_threads(),
        "workers": workers,
        "cpu_count": os.cpu_count(),
    }
    return Setting(ws, executor, splits, run, truth, description)


def save_result(out: Path, key: str, results: dict) -> None:
    """Store `results` under `key` in the JSON file `out` (one entry per mode), keeping the other keys."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stored = json.loads(out.read_text()) if out.is_file() else {}
    stored = stored if isinstance(stored, dict) and "benchmark" not in stored else {}
    stored[key] = results
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(stored, indent=2) + "\n")
    tmp.replace(out)


def run_benchmark(mode: str, workers: int, workspace: Path = WORKSPACE, out: Path = RESULTS) -> dict:
    cfg = MODES[mode]
    st = setup(workspace, workers)
    ws, executor, splits, run, truth = st.ws, st.executor, st.splits, st.run, st.truth
    model_cfg, train_cfg = run.model_config, run.train_config
    masks = torch.from_numpy(truth.masks)
    results: dict = {"benchmark": "airrep", "mode": mode, "setting": st.description, "methods": {}}
    methods = results["methods"]

    for name in BASELINES:
        log(f"baseline {name}")
        if name in TIMED:
            b = timed_baseline(ws, run, splits, name, cfg["repeats"])
        else:
            b = cached_baseline(ws, run, splits, name)
        lds = lds_score(b.scores, truth)
        methods[name] = {
            "lds": summary(lds),
            "group_lds": summary(lds),  # prediction = sum of member scores, as for LDS
            "fit_seconds": round(b.fit_seconds, 2),  # cached ones: fit + score + self-influence
            "inference_seconds": None if b.score_seconds is None else round(b.score_seconds, 4),
            "inference_times": [round(t, 4) for t in b.score_times],
            "loadavg": b.loadavg,
            "settings": BASELINES[name][1],
        }
        log(f"{name}: LDS {lds.mean:.4f}, fit {b.fit_seconds:.1f} s, score {b.score_seconds} s")

    for pooling in ("attention", "sum"):
        name = f"airrep ({pooling})"
        log(name)
        attr = make_attributor(
            "airrep",
            pooling=pooling,
            encoder=ENCODER,
            data=cfg["data"],
            training=cfg["training"],
            workspace=ws,
            executor=executor,
            progress=progress_printer(name),
        )
        load = loadavg()
        attr.fit(run, splits.train)
        check_disjoint_subsets(attr.data_.masks, truth.masks)  # raises if a training subset is an LDS one
        scores, med, times, _ = timed(lambda a=attr: a.score(splits.test), cfg["repeats"])
        groups, g_med, _, _ = timed(lambda a=attr: a.score_groups(splits.test, masks), cfg["repeats"])
        emb_q = attr.embed(splits.test)
        other = "sum" if pooling == "attention" else "attention"
        cross = group_scores(emb_q, attr.train_embeddings_, masks, other)
        hist = attr.trained_.history
        shards = shard_stats(ws, splits, model_cfg, train_cfg, attr.settings["data"])
        methods[name] = {
            "lds": summary(lds_score(scores, truth)),
            "group_lds": summary(lds_groups(groups, truth)),
            f"group_lds_scored_with_{other}": summary(lds_groups(cross, truth)),
            "inference_seconds": round(med, 4),
            "inference_times": [round(t, 4) for t in times],
            "group_inference_seconds": round(g_med, 4),
            "loadavg": load,
            "data_seconds": round(attr.costs_["data_seconds"], 1),
            "data_shards": shards,
            "train_seconds": round(attr.costs_["train_seconds"], 1),
            "best_epoch": attr.trained_.best_epoch,
            "epochs_run": len(hist),
            "heldout_lds_initial": round(hist[0]["heldout_lds"], 4),
            "heldout_lds_best": round(hist[attr.trained_.best_epoch + 1]["heldout_lds"], 4),
            "history": hist,
            "settings": attr.settings,
            "data_key": attr.data_.key,
            "training_subsets_disjoint_from_lds_subsets": True,
            "label_queries": "val split (500), disjoint from the 500 test queries",
            "encoder_key": attr.trained_.key,
        }
        log(
            f"{name}: LDS {methods[name]['lds']['mean']}, group LDS {methods[name]['group_lds']['mean']}, "
            f"score {med:.4f} s"
        )

    results["comparison"] = compare(results, run)
    results["loadavg_end"] = loadavg()
    results["markdown"] = markdown(results)
    save_result(out, mode, results)  # one entry per mode: {"quick": ..., "full": ...}
    print(results["markdown"])
    return results


def compare(results: dict, run) -> dict:
    """Targets, the inference ratio and the break-even number of queries against each timed TRAK-10 row
    (the first one's under the historical keys, every one's under `"against"`)."""
    m = results["methods"]
    against = {name: _compare(m, m[name], run, results["setting"]["n_test_queries"]) for name in TIMED}
    return {**against[TIMED[0]], "against": against}


def _compare(m: dict, trak: dict, run, nq: int) -> dict:
    air, air_sum = m["airrep (attention)"], m["airrep (sum)"]
    trak_models_s = sum(run.metrics[s]["seconds"] for s in run.seeds[1:])  # 9 extra models
    air_once = air["data_seconds"] + air["train_seconds"]
    trak_once = trak["fit_seconds"] + trak_models_s
    air_q, trak_q = air["inference_seconds"] / nq, trak["inference_seconds"] / nq
    ratio = trak["inference_seconds"] / air["inference_seconds"]
    break_even = (air_once - trak_once) / (trak_q - air_q) if trak_q > air_q else float("inf")
    return {
        "inference_speedup_vs_trak10": round(ratio, 1),
        "airrep_one_time_seconds": round(air_once, 1),
        "trak10_one_time_seconds": round(trak_once, 1),
        "trak10_extra_models_seconds": round(trak_models_s, 1),
        "airrep_seconds_per_query": air_q,
        "trak10_seconds_per_query": trak_q,
        "break_even_queries": max(0, round(break_even)) if np.isfinite(break_even) else None,
        "targets": {
            "group_lds_airrep_ge_trak10": air["group_lds"]["mean"] >= trak["group_lds"]["mean"],
            "inference_ge_50x_faster": ratio >= 50,
            "attention_beats_sum_group_lds": air["group_lds"]["mean"] > air_sum["group_lds"]["mean"],
        },
    }


def markdown(results: dict) -> str:
    rows = [
        f"### AirRep on mnist5k + mlp ({results['mode']})",
        "",
        "| method | LDS (95% CI) | group LDS (95% CI) | inference 500 q (s) | one-time (s) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results["methods"].items():
        once = (
            r["data_seconds"] + r["train_seconds"]
            if "data_seconds" in r
            else r.get("fit_seconds", float("nan"))
        )
        lds, glds = r["lds"], r["group_lds"]
        infer = "-" if r["inference_seconds"] is None else f"{r['inference_seconds']:.3f}"
        rows.append(
            f"| {name} | {lds['mean']:.3f} [{lds['ci_low']:.3f}, {lds['ci_high']:.3f}] "
            f"| {glds['mean']:.3f} [{glds['ci_low']:.3f}, {glds['ci_high']:.3f}] "
            f"| {infer} | {once:.0f} |"
        )
    rows.append("")
    comparison = results["comparison"]
    for name, c in comparison.get("against", {TIMED[0]: comparison}).items():
        rows += [
            f"- against {name}: inference speed-up {c['inference_speedup_vs_trak10']}x; AirRep one-time cost "
            f"{c['airrep_one_time_seconds']} s vs {c['trak10_one_time_seconds']} s; break-even after "
            f"{c['break_even_queries']} queries",
            "  - targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in c["targets"].items()),
        ]
    rows.append(f"- load average at the end: {results.get('loadavg_end', 'not recorded')}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="256 training subsets, <= 20 epochs (default)")
    group.add_argument("--full", action="store_true", help="512 training subsets, <= 40 epochs")
    parser.add_argument("--workers", type=int, default=2, help="retraining processes (default 2)")
    parser.add_argument("--workspace", type=Path, default=WORKSPACE)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run_benchmark("full" if args.full else "quick", args.workers, args.workspace, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
