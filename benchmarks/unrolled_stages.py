"""Unrolled in the two-stage scenario of the Source benchmark, under fresh- and fixed-seed ground truth.

    python -m benchmarks.unrolled_stages            # quick: source_dtda --quick's setting (N = 1,000, M = 50)
    python -m benchmarks.unrolled_stages --full     # source_dtda --full's setting (N = 4,000, M = 100)

The two-stage recipe of `benchmarks/source_dtda.py` (MLP with one hidden layer of 64, SGD with momentum:
pre-train on a random half A for 15 epochs, cosine; fine-tune on the other half B for 5 epochs at a
lower constant lr), explained at seed 0, its queries (the first test images) and its LDS subsets (alpha
= 0.5, subset seed 0, one retraining each). Two ground truths over the same subsets, both retraining
both stages:

- fresh: each subset a new run of seed 0 (batches re-drawn over the kept examples), exactly
  `source_dtda`'s truth (the cached artifacts are shared with it);
- fixed: seed 0's run replayed with the removed examples weighted 0 inside their batches (same init and
  batch order) -- the counterfactual that `unrolled` differentiates.

Methods, with `source_dtda.METHODS`' settings: unrolled (seed 0, through both stages), Source (L = 3),
EK-FAC influence, TRAK (one model, k = 512). Writes `benchmarks/results/unrolled_stages.json` (`{mode:
result}`) with the wall and process CPU seconds of fit + score and the 1-minute load for each row (the
machine may be shared), and prints a Markdown table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from benchmarks.console import mode_parser, progress_line, run_meta, store_result
from benchmarks.source_dtda import HIDDEN, METHODS, MODES, WORKSPACE, mnist5k_cut, scenarios
from benchmarks.unrolled import timed

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "unrolled_stages.json"
LABELS = ("unrolled", "source", "influence", "trak")
SCENARIO = "two-stage"


def run_benchmark(mode_name: str, workers: int, workspace: Path = WORKSPACE) -> dict:
    from tda_explorer.attributors import make_attributor
    from tda_explorer.evaluation import LDSConfig, compute_lds_truth, lds_score
    from tda_explorer.models import MLPConfig
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, train_stages

    torch.set_num_threads(1)
    mode, started = MODES[mode_name], time.perf_counter()
    ws, executor = Workspace(workspace), LocalExecutor(workers)
    splits = mnist5k_cut(mode["n_train"], mode["n_query"])
    model_cfg = MLPConfig(hidden=HIDDEN)
    train_cfg = scenarios(mode, len(splits.train))[SCENARIO]
    run = train_stages(splits, model_cfg, train_cfg, [0], ws, executor, progress_line("train"))
    out: dict = {
        "scenario": SCENARIO,
        "run": run.key,
        "test_acc": run.mean_metric("test_acc"),
        "train_config": train_cfg.to_dict(),
        "truths": {},
    }
    truths = {}
    for truth_mode in ("fresh", "fixed"):  # shard_size as source_dtda's: the shard artifacts are shared
        cfg = LDSConfig(
            n_subsets=mode["n_subsets"], alpha=0.5, seeds=(0,), subset_seed=0, shard_size=50, mode=truth_mode
        )
        truths[truth_mode], wall, cpu, load = timed(
            lambda c=cfg, m=truth_mode: compute_lds_truth(
                splits.train, splits.test, model_cfg, train_cfg, c, ws, executor, progress_line(f"truth {m}")
            )
        )
        out["truths"][truth_mode] = {"seconds": wall, "cpu_seconds": cpu, "load_1m": load}
    rows = {}
    for label in LABELS:
        method, settings = METHODS[label]
        attr = make_attributor(method, progress=progress_line(label), **settings)
        _, fit_s, fit_c, load = timed(lambda a=attr: a.fit(run, splits.train))
        scores, score_s, score_c, _ = timed(lambda a=attr: a.score(splits.test))
        rows[label] = {
            **{f"lds_{m}": lds_score(scores, t).to_dict() for m, t in truths.items()},
            "seconds": round(fit_s + score_s, 2),
            "cpu_seconds": round(fit_c + score_c, 2),
            "load_1m": load,
        }
        r = rows[label]
        print(
            f"  {label:<10} LDS fresh {r['lds_fresh']['mean']:.3f} fixed {r['lds_fixed']['mean']:.3f} "
            f"({r['seconds']} s wall, {r['cpu_seconds']} s CPU, load {load})",
            file=sys.stderr,
        )
        del attr
    out["methods"] = rows
    out["meta"] = {
        "mode": mode_name,
        "n_train": len(splits.train),
        "n_query": len(splits.test),
        "n_subsets": mode["n_subsets"],
        **run_meta(started, workers),
    }
    return out


def markdown(result: dict) -> str:
    """One table: methods x (LDS fresh-seed, LDS fixed-seed, cost), with the setting above it."""
    meta, t = result["meta"], result["truths"]
    lines = [
        f"Two-stage scenario of `source_dtda --{meta['mode']}` (N = {meta['n_train']:,}, "
        f"{meta['n_query']} queries, M = {meta['n_subsets']} half subsets, seed 0, test acc "
        f"{result['test_acc']:.3f}). Ground truths: fresh-seed (as source_dtda; {t['fresh']['seconds']} s "
        f"wall this invocation) and fixed-seed ({t['fixed']['seconds']} s wall, load {t['fixed']['load_1m']}).",
        "",
        "| method | LDS fresh-seed [95% CI] | LDS fixed-seed [95% CI] | fit + score wall (s) | CPU (s) | load |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in result["methods"].items():
        cells = [
            f"{r[k]['mean']:.3f} [{r[k]['ci_low']:.3f}, {r[k]['ci_high']:.3f}]"
            for k in ("lds_fresh", "lds_fixed")
        ]
        lines.append(
            f"| {label} | {cells[0]} | {cells[1]} | {r['seconds']} | {r['cpu_seconds']} | {r['load_1m']} |"
        )
    lines += ["", f"total {meta['seconds']:.0f} s wall, 1-minute load at the end {meta['load_1m_end']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = mode_parser(__doc__.split("\n")[0], "retraining worker processes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    mode = args.mode or "quick"
    result = run_benchmark(mode, args.workers)
    store_result(args.out, mode, result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
