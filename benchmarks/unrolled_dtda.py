"""d-TDA with the unrolled base on the metasmooth recipe, on >= 20 (query, example) pairs, against retraining.

    python -m benchmarks.unrolled_dtda                 # 24 pairs, 4 seeds (~300 retrainings of 240 steps)

MNIST 5k MLP, recipe `mlp-smooth` (`attributors.unrolled.smooth`), seeds 0-3. `dtda(base="unrolled",
measurement="loss")` on the first `--queries` test queries; one pair per query: the training example with
the largest |predicted mean shift| of that query's loss. Two truths per pair and seed:

- retrained: `evaluation.dtda.leave_one_out_logits` (the run's pipeline without the example: the seed's
  init, batches re-drawn over the kept examples; what `validate_dtda` and the suites' d-TDA rows use);
- fixed-seed: `train_weighted` with the example's weight 0 (same batches minus the example: exactly the
  counterfactual the unrolled derivative linearises).

Reports the Pearson correlation over pairs of predicted vs true mean shift (mean over seeds) for both
truths, EK-FAC influence's d-TDA on the same pairs, and, to see what limits the mean, the per-(pair, seed)
agreement of unrolled's delta with the fixed-seed delta and the seed-to-seed spread of the retrained delta.
Writes `benchmarks/results/unrolled_dtda.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime

import numpy as np
import torch
from scipy.stats import spearmanr

from benchmarks.console import load_1m, log, progress_line
from benchmarks.unrolled import RESULTS, WORKSPACE

OUT = RESULTS.with_name("unrolled_dtda.json")


def pearson(a, b) -> float:
    return float(np.corrcoef(np.asarray(a).ravel(), np.asarray(b).ravel())[0, 1])


def run_study(n_query: int, n_seeds: int, workers: int) -> dict:
    from tda_explorer.attributors import make_attributor
    from tda_explorer.attributors.dtda import measurement_values
    from tda_explorer.attributors.unrolled.smooth import smooth_train_config
    from tda_explorer.data import DatasetSpec, DatasetSplits, load_dataset
    from tda_explorer.evaluation.dtda import leave_one_out_logits
    from tda_explorer.models import MLPConfig
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, train_run
    from tda_explorer.training.weighted import train_weighted

    torch.set_num_threads(1)
    ws, executor = Workspace(WORKSPACE), LocalExecutor(workers)
    full = load_dataset(DatasetSpec(name="mnist5k"))
    splits = DatasetSplits(
        train=full.train,
        val=full.val,
        test=full.test.subset(np.arange(n_query)),
        spec={**full.spec, "options": {**full.spec["options"], "bench_cut": [len(full.train), n_query]}},
    )
    train, queries = splits.train, splits.test
    mcfg, tcfg = MLPConfig(), smooth_train_config("mlp-smooth")
    run = train_run(splits, mcfg, tcfg, range(n_seeds), ws, executor, progress_line("train"))
    out: dict = {"setting": f"mnist5k MLP mlp-smooth, {n_query} queries, seeds {list(run.seeds)}"}
    t0, c0, load = time.perf_counter(), time.process_time(), load_1m()
    unrolled = (
        make_attributor("dtda", base="unrolled", measurement="loss").fit(run, train).distribution(queries)
    )
    out["unrolled_seconds"] = {
        "wall": round(time.perf_counter() - t0, 1),
        "cpu": round(time.process_time() - c0, 1),
        "load_1m": load,
    }
    log(f"unrolled d-TDA: {out['unrolled_seconds']}")
    influence = (
        make_attributor("dtda", base="influence", measurement="loss").fit(run, train).distribution(queries)
    )
    shift_u, shift_i = unrolled.mean_shift(), influence.mean_shift()  # [Q, N]
    pairs = [(q, int(np.abs(shift_u[q]).argmax())) for q in range(n_query)]
    removed = [train.ids[t] for _, t in pairs]
    log(f"retraining without {len(set(removed))} examples x {n_seeds} seeds (pipeline)")
    logits = leave_one_out_logits(run, splits, removed, "test", run.seeds, ws, executor, progress_line("loo"))
    labels = queries.labels
    base = unrolled.measurements  # [S, Q] the run's own models

    def fixed_loss(seed: int, w: np.ndarray, q: int | None = None) -> np.ndarray:
        sub = queries if q is None else queries.subset([q])
        _, lg = train_weighted(mcfg, tcfg, train, seed, w, None, {"q": sub})
        return measurement_values(lg["q"], sub.labels, "loss").numpy()

    # the weighted loss's own baseline (all weights 1 through the same weighted formula)
    base_fixed = np.stack([fixed_loss(s, np.ones(len(train))) for s in run.seeds])  # [S, Q]
    retrained = np.zeros((len(pairs), n_seeds))
    fixed = np.zeros((len(pairs), n_seeds))
    for p, (q, t) in enumerate(pairs):
        lg = torch.from_numpy(logits[train.ids[t]])  # [S, Q, C]
        retrained[p] = [
            float(measurement_values(lg[s, q : q + 1], labels[q : q + 1], "loss")[0]) for s in range(n_seeds)
        ]
        for k, seed in enumerate(run.seeds):
            w = np.ones(len(train))
            w[t] = 0.0
            fixed[p, k] = float(fixed_loss(seed, w, q)[0])
        log(f"pair {p}: predicted {shift_u[q, t]:.4f}, fixed {fixed[p].mean() - base_fixed[:, q].mean():.4f}, "
            f"retrained {retrained[p].mean() - base[:, q].mean():.4f}")  # fmt: skip
    with_q = np.stack([base[:, q] for q, _ in pairs])  # [P, S]
    with_fixed = np.stack([base_fixed[:, q] for q, _ in pairs])
    true_fixed, true_retrained = fixed - with_fixed, retrained - with_q  # per seed
    out["max_abs_weighted_vs_run_loss"] = float(np.abs(base_fixed - base).max())
    pred_seed = np.stack([unrolled.deltas[:, q, t] for q, t in pairs])  # [P, S]
    pred_u = np.array([shift_u[q, t] for q, t in pairs])
    pred_i = np.array([shift_i[q, t] for q, t in pairs])
    out["n_pairs"] = len(pairs)
    out["pearson"] = {
        "unrolled_vs_retrained": pearson(pred_u, true_retrained.mean(1)),
        "unrolled_vs_fixed_seed": pearson(pred_u, true_fixed.mean(1)),
        "influence_vs_retrained": pearson(pred_i, true_retrained.mean(1)),
        "influence_vs_fixed_seed": pearson(pred_i, true_fixed.mean(1)),
        "unrolled_per_seed_vs_fixed_seed": pearson(pred_seed, true_fixed),
        "fixed_seed_mean_vs_retrained_mean": pearson(true_fixed.mean(1), true_retrained.mean(1)),
    }
    out["spearman"] = {
        "unrolled_vs_retrained": float(spearmanr(pred_u, true_retrained.mean(1)).statistic),
        "influence_vs_retrained": float(spearmanr(pred_i, true_retrained.mean(1)).statistic),
    }
    out["pairs"] = [
        {
            "query": queries.ids[q],
            "removed": train.ids[t],
            "predicted_unrolled": round(float(pred_u[p]), 6),
            "predicted_influence": round(float(pred_i[p]), 6),
            "retrained": round(float(true_retrained[p].mean()), 6),
            "fixed_seed": round(float(true_fixed[p].mean()), 6),
            "per_seed_predicted": [round(float(x), 6) for x in pred_seed[p]],
            "per_seed_fixed": [round(float(x), 6) for x in true_fixed[p]],
            "per_seed_retrained": [round(float(x), 6) for x in true_retrained[p]],
        }
        for p, (q, t) in enumerate(pairs)
    ]
    log(f"d-TDA: {out['pearson']}")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=24)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    doc = run_study(args.queries, args.seeds, args.workers)
    doc["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(OUT)
    print(json.dumps(doc["pearson"], indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
