"""Cost of exact unrolled attribution on the demo: the clicked query's latency, and the score matrix's rank.

    python -m benchmarks.unrolled_cost latency             # the demo's click, autograd vs closed form
    python -m benchmarks.unrolled_cost rank                # LDS of rank-r truncations of the exact scores

`latency`: the app's demo run (MNIST 5k, the default MLP recipe, 945 steps), its first seed (the
Attribution page's default "first"), test queries 0, 1, 2 clicked in turn. "autograd" = the reverse pass
through autograd's double backward with segments replayed (`reverse_pass(fast=False)`, no tape: the code
before the closed-form step); "closed form" = `Unrolled.fit` (one replay that keeps the tape) then
`weight_gradients` per click (`chain`). Wall and process CPU seconds, one torch thread (CPU seconds are
about what an idle core takes; the box is shared) and the 1-minute load.

`rank`: can a randomized sketch (r reverse passes with random query combinations and r forward-mode
passes with random example-weight perturbations: S ~ Q_Y Q_Y^T S with Q_Y = orth(S V)) give 500 queries
for about 2r trainings? Its best case is the rank-r truncated SVD of the exact score matrix S `[n, N]`;
this computes S exactly for the first `--queries` test queries on the `mlp-smooth` recipe and scores
the truncations against the fixed-seed truths of `benchmarks.unrolled_smooth` (alpha 0.99 / 0.95).
Writes `benchmarks/results/unrolled_cost.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime

import torch

from benchmarks.console import load_1m, log, progress_line
from benchmarks.unrolled import RESULTS, WORKSPACE, restrict

OUT = RESULTS.with_name("unrolled_cost.json")


def timed(fn) -> tuple[object, dict]:
    load, t0, c0 = load_1m(), time.perf_counter(), time.process_time()
    out = fn()
    cost = {"seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(time.process_time() - c0, 2)}
    return out, cost | {"load_1m": load}


def demo_run():
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.models import default_model_config
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, default_train_config, train_run

    splits = load_dataset(DatasetSpec("mnist5k"))
    mcfg, tcfg = default_model_config("mlp"), default_train_config("mlp")
    return splits, train_run(splits, mcfg, tcfg, (0,), Workspace(WORKSPACE), LocalExecutor(1))


def latency(clicks: int = 3) -> dict:
    """The demo's clicked-query latency, autograd (before) vs closed form + tape (now); see module docstring."""
    from tda_explorer.attributors.unrolled import Trajectory, Unrolled
    from tda_explorer.attributors.unrolled.reverse import measurement_gradients, reverse_pass
    from tda_explorer.backend.device import get_dtype
    from tda_explorer.training.stages import run_training_config

    torch.set_num_threads(1)
    splits, run = demo_run()
    out: dict = {"run": run.key, "threads": 1}
    log("autograd path: replay (no tape) + double-backward reverse pass, query 0")
    traj = Trajectory(run.model_config, run_training_config(run), splits.train, 0, get_dtype(), None, 0)
    theta, fit = timed(traj.record)
    q = splits.test.subset([0])
    cot = measurement_gradients(traj.models[-1], traj.flat, theta, q.inputs, q.labels)
    slow, score = timed(lambda: reverse_pass(traj, cot, fast=False))
    out["autograd"] = {"fit": fit, "click": score}
    log(f"autograd: {out['autograd']}")
    a = Unrolled(seeds="first")
    _, fit = timed(lambda: a.fit(run, splits.train))
    member, rows = a.members_[0], []
    for i in range(clicks):
        g, c = timed(lambda i=i: a.weight_gradients(member, splits.test.subset([i])))
        rows.append(c)
        if i == 0:
            out["max_rel_diff_vs_autograd"] = float((g[0] - slow[0]).abs().max() / slow[0].abs().max())
    out["closed_form"] = {
        "fit": fit,
        "clicks": rows,
        "tape_mb": round(tape_bytes(member.trajectory) / 2**20, 1),
    }
    log(f"closed form: {out['closed_form']}")
    return out


def tape_bytes(traj) -> int:
    return sum(t.numel() * t.element_size() for w, acts, lg in traj.tapes.values() for t in (*w, *acts, lg))


def rank_study(n_query: int, n_subsets: int, ranks=(1, 2, 5, 10, 20, 40)) -> dict:
    """LDS of rank-r truncations of the exact mlp-smooth scores (see module docstring)."""
    from tda_explorer.attributors.unrolled import Unrolled
    from tda_explorer.attributors.unrolled.smooth import smooth_train_config
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.evaluation import LDSConfig, compute_lds_truth, lds_score
    from tda_explorer.models import MLPConfig
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, train_model, train_run

    torch.set_num_threads(1)
    ws, executor = Workspace(WORKSPACE), LocalExecutor(1)
    splits = load_dataset(DatasetSpec(name="mnist5k"))
    mcfg, tcfg = MLPConfig(), smooth_train_config("mlp-smooth")
    run = train_run(splits, mcfg, tcfg, (0,), ws, executor)
    queries = splits.test.subset(range(n_query))
    truths = {}
    for alpha in (0.99, 0.95):
        cfg = LDSConfig(
            n_subsets=n_subsets, alpha=alpha, seeds=(0,), subset_seed=0, shard_size=10, mode="fixed"
        )
        truth = compute_lds_truth(
            splits.train, queries, mcfg, tcfg, cfg, ws, executor, progress_line(f"truth {alpha}")
        )
        truths[f"alpha={alpha} fixed"] = restrict(truth, n_query)
    _, once = timed(lambda: train_model(mcfg, tcfg, splits.train, 0))
    a = Unrolled(seeds="first")
    _, fit = timed(lambda: a.fit(run, splits.train))
    scores, score = timed(lambda: a.score(queries))
    out = {"n_query": n_query, "n_subsets": n_subsets, "training_once": once, "fit": fit, "score": score}
    out["exact"] = {k: lds_score(scores, t).to_dict()["mean"] for k, t in truths.items()}
    u, s, vh = torch.linalg.svd(scores.double(), full_matrices=False)
    out["singular_values"] = [round(float(x), 6) for x in s[:50]]
    out["ranks"] = {}
    for r in ranks:
        if r > len(s):
            continue
        approx = (u[:, :r] * s[:r]) @ vh[:r]
        energy = float(s[:r].square().sum() / s.square().sum())
        out["ranks"][r] = {"energy": round(energy, 4)} | {
            k: round(lds_score(approx.float(), t).to_dict()["mean"], 4) for k, t in truths.items()
        }
        log(f"rank {r}: {out['ranks'][r]}")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=("latency", "rank"), help="what to measure (merged into the JSON)")
    p.add_argument("--queries", type=int, default=50, help="rank: first n test queries")
    p.add_argument("--subsets", type=int, default=40, help="rank: LDS subsets per truth")
    args = p.parse_args(argv)
    doc = json.loads(OUT.read_text()) if OUT.exists() else {}
    doc[args.study] = latency() if args.study == "latency" else rank_study(args.queries, args.subsets)
    doc["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(OUT)
    print(json.dumps(doc[args.study], indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
