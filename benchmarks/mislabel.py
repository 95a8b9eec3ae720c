"""Mislabel detection vs cleanlab and the own-loss baseline, same run, same flips (issue 21, item 3).

On scikit-learn digits with 10% of the training labels flipped (`inject_label_noise`, seed 0), a run of
`SEEDS` seeds is trained with the package's default recipe (logistic regression; MLP 128), then every
mislabel score is computed on that run and ranked against the recorded flips (ROC-AUC, and recall when
inspecting the top 10% / 20%):

- own loss (baseline): each example's cross-entropy at the final models, mean over the seeds;
- loss dynamics: the same averaged over every saved checkpoint of every seed;
- cleanlab: `1 - cleanlab.rank.get_label_quality_scores` (self-confidence) on out-of-fold probabilities
  from K = 5-fold retraining through the package's executor (`label_quality.out_of_fold_probs`);
- self-influence of TRAK (defaults, all seeds) and of influence (EK-FAC, defaults, all seeds);
- `mislabel_score` (the mean of normalised ranks) of own loss + cleanlab's out-of-fold score +
  self-influence, and its subsets.

Writes `benchmarks/results/mislabel.json` (`{mode: result}`); `python -m benchmarks.mislabel --quick|--full`.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from benchmarks.measure import mode_main, short_machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mislabel.json"
WORKSPACE = ROOT / "benchmarks" / ".workspace"
SEEDS = 5
MODES = {"quick": {"models": ("logreg",), "folds": 5}, "full": {"models": ("logreg", "mlp"), "folds": 5}}


def log(msg: str) -> None:
    print(f"[mislabel {datetime.now(UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


@torch.no_grad()
def loss_dynamics(run, train) -> torch.Tensor:
    """Mean cross-entropy over every checkpoint of every seed `[N]`."""
    from tda_explorer.evaluation._common import cross_entropy
    from tda_explorer.models import prepare_inputs
    from tda_explorer.training.trainer import predict_logits

    out = []
    for s in run.seeds:
        for c in range(len(run.checkpoints[s])):
            model = run.model(s, c)
            out.append(
                cross_entropy(predict_logits(model, prepare_inputs(model, train.inputs)), train.labels)
            )
    return torch.stack(out).mean(0)


def protocol(arch: str, splits, ws, folds: int) -> dict:
    from tda_explorer.attributors import make_attributor
    from tda_explorer.data import inject_label_noise
    from tda_explorer.evaluation.label_quality import cleanlab_scores, mislabel_score, out_of_fold_probs
    from tda_explorer.evaluation.mislabel import mislabel_metrics, training_loss_scores
    from tda_explorer.models import LogRegConfig, MLPConfig
    from tda_explorer.training import LocalExecutor, default_train_config, train_run

    noisy = inject_label_noise(splits, 0.1, 0)
    model_cfg = LogRegConfig() if arch == "logreg" else MLPConfig(hidden=(128,))
    run = train_run(noisy, model_cfg, default_train_config(arch), range(SEEDS), ws, LocalExecutor(1))
    train, ids, flips = noisy.train, noisy.train.ids, noisy.flipped_ids
    signals, seconds = {}, {}

    def timed(name, fn):
        t = time.perf_counter()
        signals[name] = np.asarray(torch.as_tensor(fn()).double().cpu())
        seconds[name] = round(time.perf_counter() - t, 1)
        log(f"{arch} {name}: AUC {mislabel_metrics(signals[name], flips, ids).auc:.4f} ({seconds[name]}s)")

    timed("own loss (baseline)", lambda: training_loss_scores(run, train))
    timed("loss dynamics (all checkpoints)", lambda: loss_dynamics(run, train))
    oof = {}

    def cleanlab():
        oof["p"] = out_of_fold_probs(run, train, n_folds=folds, executor=LocalExecutor(1))
        return cleanlab_scores(oof["p"], train.labels)

    timed(f"cleanlab (self-confidence, {folds}-fold out-of-fold)", cleanlab)
    timed("cleanlab normalized_margin", lambda: cleanlab_scores(oof["p"], train.labels, "normalized_margin"))
    timed(f"trak-{SEEDS} self-influence", lambda: make_attributor("trak").fit(run, train).self_influence())
    timed(
        f"influence/ekfac self-influence ({SEEDS} seeds)",
        lambda: make_attributor("influence", seeds="all").fit(run, train).self_influence(),
    )
    loss, dyn = signals["own loss (baseline)"], signals["loss dynamics (all checkpoints)"]
    cl = signals[f"cleanlab (self-confidence, {folds}-fold out-of-fold)"]
    trak, ekfac = (
        signals[f"trak-{SEEDS} self-influence"],
        signals[f"influence/ekfac self-influence ({SEEDS} seeds)"],
    )
    combos = {
        "mislabel_score = ranks(loss, cleanlab, trak SI)": (loss, cl, trak),
        "ranks(loss, cleanlab, ekfac SI)": (loss, cl, ekfac),
        "ranks(loss, cleanlab)": (loss, cl),
        "ranks(loss dynamics, cleanlab, trak SI)": (dyn, cl, trak),
        "ranks(loss, cleanlab, trak SI, ekfac SI)": (loss, cl, trak, ekfac),
    }
    for name, parts in combos.items():
        signals[name] = mislabel_score(parts)
        seconds[name] = None
        log(f"{arch} {name}: AUC {mislabel_metrics(signals[name], flips, ids).auc:.4f}")
    rows = [
        {"score": name, **mislabel_metrics(s, flips, ids, (0.1, 0.2)).to_dict(), "seconds": seconds[name]}
        for name, s in signals.items()
    ]
    return {
        "model": arch,
        "run": run.key,
        "test_acc": run.mean_metric("test_acc"),
        "n_flipped": len(flips),
        "rows": rows,
    }


def run_benchmark(mode: str) -> dict:
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.store import Workspace

    cfg = MODES[mode]
    started = time.perf_counter()
    splits = load_dataset(DatasetSpec("digits"))
    ws = Workspace(WORKSPACE)
    protocols = [protocol(arch, splits, ws, cfg["folds"]) for arch in cfg["models"]]
    return {
        "benchmark": "mislabel",
        "mode": mode,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": {"spec": splits.spec, "n_train": len(splits.train), "noise": {"fraction": 0.1, "seed": 0}},
        "seeds": SEEDS,
        "protocols": protocols,
        "machine": short_machine(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def markdown(result: dict) -> str:
    """One table per model; the targets (combined score >= cleanlab and >= own loss) checked."""
    out = [
        f"Digits ({result['dataset']['n_train']} train), 10% of the labels flipped (seed 0), {result['seeds']} "
        "seeds trained with the package's default recipe; every score on the same run and flips. "
        "Recall = share of the flips found in the top 10% / 20% of the ranking.",
    ]
    for p in result["protocols"]:
        out += [
            "",
            f"**{p['model']}** (test accuracy {p['test_acc']:.3f}, {p['n_flipped']} flips)",
            "",
            "| score | AUC | recall@10% | recall@20% | s |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in p["rows"]:
            rec = r["recall_at"]
            sec = "–" if r["seconds"] is None else f"{r['seconds']:.1f}"
            out.append(f"| {r['score']} | {r['auc']:.4f} | {rec['0.1']:.3f} | {rec['0.2']:.3f} | {sec} |")
        rows = {r["score"]: r for r in p["rows"]}
        combo = next(r for k, r in rows.items() if k.startswith("mislabel_score"))
        base = rows["own loss (baseline)"]
        clean = next(r for k, r in rows.items() if k.startswith("cleanlab (self"))
        ok = combo["auc"] >= clean["auc"] and combo["auc"] >= base["auc"]
        out += [
            "",
            f"Target (mislabel_score AUC >= cleanlab's and >= own loss): {'met' if ok else 'MISSED'} "
            f"({combo['auc']:.4f} vs {clean['auc']:.4f} / {base['auc']:.4f}).",
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    return mode_main(argv, __doc__.split("\n")[0], run_benchmark, markdown, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
