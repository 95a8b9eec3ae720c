"""Source and d-TDA benchmark: LDS of Source vs influence vs TRAK, and d-TDA against retraining.

    python -m benchmarks.source_dtda --quick   # N = 1,000 train images, M = 50 LDS subsets (< 10 min)
    python -m benchmarks.source_dtda --full    # N = 4,000 (all of mnist5k), M = 100 subsets
    python -m benchmarks.source_dtda --full --scenarios two-stage --out /tmp/two_stage.json
        # one scenario's LDS row only (no d-TDA: it runs on the converged scenario), into another file
        # (required: a partial run would replace the stored mode entry, so the default --out is refused)

mnist5k, an MLP (one hidden layer of 64), SGD with momentum. Three training scenarios, each explained by
the first seed's model(s) and scored by LDS (alpha = 0.5, one retraining seed per subset; the ground
truth of the two-stage pipeline retrains *both* stages on every subset):

- converged: 30 epochs, cosine schedule to 0, 6 checkpoints;
- early: stopped after 2 epochs at a constant learning rate (far from a minimum), 6 checkpoints;
- two-stage: pre-train on a random half A (15 epochs, cosine), then fine-tune on the other half B
  (5 epochs, lower constant lr), 3 checkpoints per stage; queries are the test images.

Methods: Source (L = 3 segments; segments never cross the stage boundary), Source with L = 1 (the
"influence with damping 1/(eta K)" limit), EK-FAC influence (default damping) at the final weights, and
TRAK (one model, 512-d projection), and `unrolled` (the exact derivative through every optimizer step
of the first seed's run, both stages of the two-stage one; rows without it were measured before it was
added and show "-"). d-TDA (base = EK-FAC influence, measurement = query loss, S seeds
of the converged run) is validated by retraining the S seeds without each of a handful of training
examples (pairs with the largest predicted mean shifts, both signs): correlation of predicted vs
retrained mean shifts, mean error and W2 of the distributions (full mode also scores the same pairs
and retrainings with d-TDA over Source).

Writes `benchmarks/results/source_dtda.json` and prints a Markdown table. Artifacts (runs, ground truth,
d-TDA values) are cached in `benchmarks/.workspace`, so a rerun only recomputes what changed; the
recorded wall times are those of this invocation (a cached step shows its load time). The machine may be
shared: the 1-minute load average is recorded next to the timings.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.console import load_1m, mode_parser, progress_line, run_meta, store_result

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = ROOT / "benchmarks" / ".workspace"
RESULTS = ROOT / "benchmarks" / "results" / "source_dtda.json"

MODES = {
    "quick": {
        "n_train": 1000,
        "n_query": 100,
        "n_subsets": 50,
        "converged_epochs": 30,
        "dtda_seeds": 4,
        "dtda_pairs": 6,
        "dtda_source": False,
        "pruning_fractions": (0.0, 0.1, 0.2, 0.3),
    },
    "full": {
        "n_train": 4000,
        "n_query": 300,
        "n_subsets": 100,
        "converged_epochs": 30,
        "dtda_seeds": 6,
        "dtda_pairs": 8,
        "dtda_source": True,
        "pruning_fractions": (0.0, 0.1, 0.2),
    },
}
HIDDEN = (64,)
METHODS = {
    "source": ("source", {"segments": 3}),
    "source (L=1)": ("source", {"segments": 1}),
    "influence": ("influence", {"solver": "ekfac"}),
    # k = 512 < N: with k > N the unregularised TRAK kernel interpolates the training set (LDS ~ 0)
    "trak": ("trak", {"proj_dim": 512, "n_models": 1, "proj_type": "rademacher"}),
    "unrolled": ("unrolled", {}),  # seed 0 replayed exactly; the fresh-seed truth here re-draws batches
}


def scenarios(mode: dict, n_train: int) -> dict:
    """name -> TrainConfig or StagedConfig."""
    from tda_explorer.training import Stage, StagedConfig, TrainConfig

    base = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-3, "batch_size": 64}
    part_a = np.random.default_rng(0).permutation(n_train) < n_train // 2
    return {
        "converged": TrainConfig(
            lr=0.05, epochs=mode["converged_epochs"], schedule="cosine", checkpoints=6, **base
        ),
        "early": TrainConfig(lr=0.05, epochs=2, schedule="constant", checkpoints=6, **base),
        "two-stage": StagedConfig(
            (
                Stage(
                    TrainConfig(lr=0.05, epochs=15, schedule="cosine", checkpoints=3, **base),
                    part_a,
                    "pretrain",
                ),
                Stage(
                    TrainConfig(lr=0.01, epochs=5, schedule="constant", checkpoints=3, **base),
                    ~part_a,
                    "finetune",
                ),
            )
        ),
    }


def mnist5k_cut(n_train: int, n_query: int):
    """mnist5k's first `n_train` training images (at most all) and first `n_query` test images (the
    queries), with the cut recorded in the spec (so in every artifact key)."""
    from tda_explorer.data import DatasetSpec, DatasetSplits, load_dataset

    full = load_dataset(DatasetSpec(name="mnist5k"))
    n = min(n_train, len(full.train))
    return DatasetSplits(
        train=full.train.subset(np.arange(n)),
        val=full.val,
        test=full.test.subset(np.arange(n_query)),
        spec={**full.spec, "options": {**full.spec["options"], "bench_cut": [n, n_query]}},
    )


@dataclass(frozen=True)
class DtdaStep:
    """Runs a d-TDA evaluation step (`validate_dtda`, `dtda_pruning`) of one run with a base attributor
    measured on the query loss, and times it."""

    run: Any
    splits: Any
    workspace: Any
    executor: Any

    def __call__(self, step: Callable, base: str, label: str | None = None, **kwargs) -> tuple[Any, float]:
        """`(step(...), wall seconds rounded to 0.1)`; `label` names a progress line on stderr (None: none)."""
        t0 = time.perf_counter()
        value = step(
            self.run,
            self.splits,
            {"base": base, "measurement": "loss"},
            workspace=self.workspace,
            executor=self.executor,
            progress=progress_line(label) if label else None,
            **kwargs,
        )
        return value, round(time.perf_counter() - t0, 1)


def run_benchmark(
    mode_name: str, workers: int, workspace: Path = WORKSPACE, only: tuple[str, ...] = ()
) -> dict:
    """The mode's scenarios (`only`: those named, in the usual order), their LDS rows and, with the
    converged scenario, the d-TDA steps."""
    from tda_explorer.attributors import make_attributor
    from tda_explorer.evaluation import LDSConfig, compute_lds_truth, lds_score
    from tda_explorer.evaluation.dtda import dtda_pruning, validate_dtda
    from tda_explorer.models import MLPConfig
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, StagedConfig, train_run, train_stages

    torch.set_num_threads(1)
    mode = MODES[mode_name]
    started = time.perf_counter()
    ws = Workspace(workspace)
    executor = LocalExecutor(workers)
    splits = mnist5k_cut(mode["n_train"], mode["n_query"])
    n = len(splits.train)
    model_cfg = MLPConfig(hidden=HIDDEN)
    # one shard = one worker pool (spawning one costs ~10-20 s on a busy box); shards do not change the key
    lds_cfg = LDSConfig(n_subsets=mode["n_subsets"], alpha=0.5, seeds=(0,), subset_seed=0, shard_size=50)
    out: dict = {"scenarios": {}}
    for name, train_cfg in scenarios(mode, n).items():
        if only and name not in only:
            continue
        print(f"== {name}", file=sys.stderr)
        t0 = time.perf_counter()
        seeds = range(mode["dtda_seeds"]) if name == "converged" else [0]
        if isinstance(train_cfg, StagedConfig):
            run = train_stages(splits, model_cfg, train_cfg, seeds, ws, executor, progress_line("train"))
        else:
            run = train_run(splits, model_cfg, train_cfg, seeds, ws, executor, progress_line("train"))
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        truth = compute_lds_truth(
            splits.train, splits.test, model_cfg, train_cfg, lds_cfg, ws, executor, progress_line("LDS truth")
        )
        t_truth = time.perf_counter() - t0
        rows = {}
        for label, (method, settings) in METHODS.items():
            t0, c0 = time.perf_counter(), time.process_time()
            load = load_1m()
            attr = make_attributor(method, **settings).fit(run, splits.train)
            scores = attr.score(splits.test)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            lds = lds_score(scores, truth)
            rows[label] = {
                **lds.to_dict(),
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu, 2),
                "load_1m": load,
            }
            print(
                f"  {label:<14} LDS {lds.mean:.3f} [{lds.ci_low:.3f}, {lds.ci_high:.3f}] ({seconds:.1f} s)",
                file=sys.stderr,
            )
            del attr
        out["scenarios"][name] = {
            "run": run.key,
            "test_acc": run.mean_metric("test_acc"),
            "train_acc": run.mean_metric("train_acc"),
            "train_config": train_cfg.to_dict(),
            "train_seconds": round(t_train, 1),
            "truth_seconds": round(t_truth, 1),
            "methods": rows,
        }
        if name == "converged":
            step = DtdaStep(run, splits, ws, executor)
            val, seconds = step(validate_dtda, "influence", "d-TDA retraining", n_pairs=mode["dtda_pairs"])
            out["dtda_validation"] = {
                **val.summary(),
                "seconds": seconds,
                "pairs": val.table(),
                "run": run.key,
            }
            print(f"  d-TDA validation: {val.summary()}", file=sys.stderr)
            if mode["dtda_source"]:  # the same pairs (and cached retrainings), predicted with Source per seed
                alt, seconds = step(validate_dtda, "source", "d-TDA source", pairs=val.pairs)
                out["dtda_validation_source"] = {**alt.summary(), "seconds": seconds, "pairs": alt.table()}
                print(f"  d-TDA (source) on the same pairs: {alt.summary()}", file=sys.stderr)
            fractions = mode["pruning_fractions"]
            pruning, seconds = step(dtda_pruning, "influence", "d-TDA pruning", fractions=fractions)
            out["dtda_pruning"] = {
                "rows": pruning.table(),
                "seed_used": pruning.seed_used,
                "seeds": list(run.seeds),
                "seconds": seconds,
            }
            print(f"  d-TDA pruning: {pruning.table()}", file=sys.stderr)
    out["meta"] = {
        "mode": mode_name,
        "scenarios": list(out["scenarios"]),
        "settings": mode,
        "hidden": list(HIDDEN),
        "lds": {"n_subsets": lds_cfg.n_subsets, "alpha": lds_cfg.alpha, "seeds": list(lds_cfg.seeds)},
        **run_meta(started, workers),
    }
    return out


def markdown(result: dict) -> str:
    """The LDS table (rows = scenarios, columns = methods; "-" for a method the stored run did not have)
    and the d-TDA validation line."""
    labels = list(METHODS)

    def cell(m: dict, k: str) -> str:
        return f"{m[k]['mean']:.3f} [{m[k]['ci_low']:.3f}, {m[k]['ci_high']:.3f}]" if k in m else "-"

    lines = [
        "| scenario | test acc | " + " | ".join(labels) + " | Source - influence |",
        "|---|---|" + "---|" * len(labels) + "---|",
    ]
    for name, sc in result["scenarios"].items():
        m = sc["methods"]
        cells = [cell(m, k) for k in labels]
        diff = m["source"]["mean"] - m["influence"]["mean"]
        lines.append(f"| {name} | {sc['test_acc']:.3f} | " + " | ".join(cells) + f" | {diff:+.3f} |")
    for key, base in (("dtda_validation", "influence"), ("dtda_validation_source", "source")):
        v = result.get(key)
        if v:
            lines += [
                "",
                f"d-TDA validation, base {base} ({v['n_pairs']} pairs x {v['n_seeds']} seeds, measurement "
                f"{v['measurement']}): Pearson {v['pearson']:.3f}, Spearman {v['spearman']:.3f}, sign agreement "
                f"{v['sign_agreement']:.2f}, mean error {v['mean_error']:.4f}, W2 {v['w2']:.4f} (vs "
                f"{v['w2_unchanged']:.4f} predicting no change)",
            ]
    pruning = result.get("dtda_pruning")
    if pruning:
        lines += [
            "",
            f"d-TDA pruning (converged run; usefulness to the validation set; retrained on the run's "
            f"{len(pruning['seeds'])} seeds, test accuracy mean over seeds; fixed seed = seed "
            f"{pruning['seed_used']}'s scores only):",
            "",
            "| fraction removed | test acc: d-TDA mean over seeds | fixed seed | random "
            "| test loss: d-TDA mean | fixed seed | random |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {r['fraction']:.2f} | {r['dtda_acc']:.4f} | {r['fixed_seed_acc']:.4f} | {r['random_acc']:.4f} "
                f"| {r['dtda_loss']:.4f} | {r['fixed_seed_loss']:.4f} | {r['random_loss']:.4f} |"
                for r in pruning["rows"]
            ),
        ]
    lines += ["", f"mode {result['meta']['mode']}, total {result['meta']['seconds']:.0f} s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = mode_parser(__doc__.split("\n")[0], "retraining worker processes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--scenarios",
        default="",
        help="comma-separated scenarios to run (default all; d-TDA needs converged); needs --out "
        "other than the stored results file, whose mode entry a partial run would replace",
    )
    parser.add_argument(
        "--workspace", type=Path, default=WORKSPACE, help="artifact cache (default %(default)s)"
    )
    args = parser.parse_args(argv)
    mode = args.mode or "quick"
    only = tuple(x for x in args.scenarios.split(",") if x)
    unknown = set(only) - {"converged", "early", "two-stage"}
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from converged, early, two-stage")
    if only and args.out.resolve() == RESULTS.resolve():
        parser.error(
            f"--scenarios runs part of the benchmark: its result would replace the whole {mode} entry of "
            f"{RESULTS} (its other scenarios and d-TDA blocks); pass --out <another file>."
        )
    result = run_benchmark(mode, args.workers, args.workspace, only)
    store_result(args.out, mode, result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
