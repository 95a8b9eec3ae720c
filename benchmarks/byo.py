"""Bring your own model: a model of an architecture the zoo lacks, trained outside the package, imported.

The "user" model is a 64-48-24-10 tanh MLP (the zoo's MLP is ReLU) trained by its own loop (Adam,
its own init and batch order, `user_train` below) on scikit-learn digits, one model per seed, and brought
in with `import_run(build_user, [state dicts], splits, train_fn=user_train)`. The LDS ground truth
retrains subsets with that same `train_fn` (the package's LDS, the user's recipe). Next to it, the
nearest native run: the zoo's MLP with the same widths (ReLU) trained by the package's default recipe,
with its own ground truth. Each method is run with the same settings on both.

Writes `benchmarks/results/byo.json` (`{mode: result}`); `python -m benchmarks.byo --quick|--full`.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.measure import mode_main, short_machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "byo.json"
WORKSPACE = ROOT / "benchmarks" / ".workspace"

MODES = {
    "quick": {"seeds": 3, "n_subsets": 30, "n_query": 50, "epochs": 10},
    "full": {"seeds": 5, "n_subsets": 100, "n_query": 250, "epochs": 20},
}
WIDTHS = (48, 24)


def build_user() -> nn.Module:
    """The user's architecture (not in the zoo: tanh, these widths)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, WIDTHS[0]), nn.Tanh(), nn.Linear(WIDTHS[0], WIDTHS[1]), nn.Tanh(),
        nn.Linear(WIDTHS[1], 10),
    )  # fmt: skip


def user_train(factory, examples, seed: int) -> dict:
    """The user's loop: Adam 5e-3, batch 32, 20 epochs, its own init seed and batch order (not the package's
    trainer)."""
    return _user_loop(factory, examples, seed, epochs=20)


def user_train_short(factory, examples, seed: int) -> dict:
    """`user_train` with 10 epochs. A function of its own, not a module setting: retrainings run in worker
    processes that re-import this module, and a recipe is cached under its function's name."""
    return _user_loop(factory, examples, seed, epochs=10)


#: The user's loop per number of epochs (`MODES[...]["epochs"]`).
TRAIN_FNS = {20: user_train, 10: user_train_short}


def _user_loop(factory, examples, seed: int, epochs: int) -> dict:
    torch.manual_seed(10_000 + seed)
    model = factory()
    gen = torch.Generator().manual_seed(20_000 + seed)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    x, y = examples.inputs, examples.labels
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for b in range(0, len(y), 32):
            idx = order[b : b + 32]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.state_dict()


def methods(n_seeds: int) -> list[tuple[str, str, dict]]:
    """(label, attributor, settings): every method that needs only weights."""
    return [
        ("grad_dot", "grad_dot", {"params": "all"}),
        ("grad_cos", "grad_cos", {"params": "all"}),
        ("repsim", "repsim", {}),
        ("influence/ekfac", "influence", {"solver": "ekfac", "params": "all"}),
        ("influence/cg (50 it)", "influence", {"solver": "cg", "params": "all", "max_iter": 50}),
        (f"trak-{n_seeds} (sjlt 2048)", "trak", {"proj_type": "sjlt", "proj_dim": 2048}),
        ("trak-1 (sjlt 2048)", "trak", {"proj_type": "sjlt", "proj_dim": 2048, "n_models": 1}),
    ]


def log(msg: str) -> None:
    print(f"[byo {datetime.now(UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def side(run, splits, queries, truth, n_seeds: int) -> list[dict]:
    from tda_explorer.attributors import make_attributor
    from tda_explorer.evaluation import lds_score

    rows = []
    for label, name, settings in methods(n_seeds):
        start = time.perf_counter()
        scores = make_attributor(name, **settings).fit(run, splits.train).score(queries)
        seconds = time.perf_counter() - start
        lds = lds_score(scores, truth)
        rows.append({"method": label, "lds": lds.to_dict(), "seconds": round(seconds, 2)})
        log(f"{label}: LDS {lds.mean:.3f} [{lds.ci_low:.3f}, {lds.ci_high:.3f}] in {seconds:.1f}s")
    return rows


def run_benchmark(mode: str) -> dict:
    from tda_explorer import import_run
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.evaluation import LDSConfig, compute_lds_truth
    from tda_explorer.models import MLPConfig
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, default_train_config, train_run

    cfg = MODES[mode]
    train_fn = TRAIN_FNS[cfg["epochs"]]
    ws = Workspace(WORKSPACE)
    started = time.perf_counter()
    splits = load_dataset(DatasetSpec("digits"))
    queries = splits.test.subset(range(cfg["n_query"]), name="digits:queries")
    seeds = range(cfg["seeds"])

    t0 = time.perf_counter()
    states = [train_fn(build_user, splits.train, s) for s in seeds]
    user_seconds = time.perf_counter() - t0
    imported = import_run(build_user, states, splits, train_fn=train_fn, workspace=ws)
    log(
        f"imported {imported.key}: test acc {imported.mean_metric('test_acc'):.3f} ({user_seconds:.1f}s to train)"
    )

    native_cfg, native_train = MLPConfig(hidden=WIDTHS), default_train_config("mlp")
    native = train_run(splits, native_cfg, native_train, seeds, ws, LocalExecutor(1))
    log(f"native {native.key}: test acc {native.mean_metric('test_acc'):.3f}")

    lds_cfg = LDSConfig(n_subsets=cfg["n_subsets"], alpha=0.5, seeds=(0,), shard_size=10)
    result_sides = {}
    for name, run in (("imported", imported), ("native", native)):
        t0 = time.perf_counter()
        truth = compute_lds_truth(
            splits.train, queries, run.model_config, run.require_recipe("LDS"), lds_cfg, ws, LocalExecutor(1)
        )
        truth_seconds = time.perf_counter() - t0
        log(f"{name}: LDS ground truth {truth.key} ({truth_seconds:.1f}s)")
        result_sides[name] = {
            "run": run.key,
            "test_acc": run.mean_metric("test_acc"),
            "truth": {"key": truth.key, "seconds": round(truth_seconds, 1)},
            "rows": side(run, splits, queries, truth, cfg["seeds"]),
        }
    return {
        "benchmark": "byo",
        "mode": mode,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": {"spec": splits.spec, "n_train": len(splits.train), "n_query": len(queries)},
        "user_model": "64-48-24-10 tanh MLP, Adam 5e-3, batch 32, own init and order, "
        f"{cfg['epochs']} epochs (benchmarks.byo.{train_fn.__name__})",
        "native_model": {"model": native_cfg.to_dict(), "training": native_train.to_dict()},
        "lds": {"n_subsets": lds_cfg.n_subsets, "alpha": lds_cfg.alpha, "seeds": list(lds_cfg.seeds)},
        "sides": result_sides,
        "machine": short_machine(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def markdown(result: dict) -> str:
    """Imported vs native, one row per method."""
    imp, nat = result["sides"]["imported"], result["sides"]["native"]
    lines = [
        f"### Your own model ({result['mode']}): {result['user_model']}, imported, on digits",
        "",
        f"Imported run: test accuracy {imp['test_acc']:.3f}; nearest native run (zoo MLP {WIDTHS}, ReLU, the "
        f"package's default recipe): {nat['test_acc']:.3f}. LDS ground truth per side: "
        f"{result['lds']['n_subsets']} subsets of {result['lds']['alpha']:.0%}, each retrained by that side's "
        f"recipe (the imported side through `train_fn` = the user's loop), {result['dataset']['n_query']} queries.",
        "",
        "| method | LDS imported | 95% CI | s | LDS native | 95% CI | s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    native_rows = {r["method"]: r for r in nat["rows"]}
    for r in imp["rows"]:
        n = native_rows.get(r["method"])
        a = r["lds"]
        cells = f"| {r['method']} | {a['mean']:.3f} | [{a['ci_low']:.3f}, {a['ci_high']:.3f}] | {r['seconds']:.1f} |"
        if n is not None:
            b = n["lds"]
            cells += f" {b['mean']:.3f} | [{b['ci_low']:.3f}, {b['ci_high']:.3f}] | {n['seconds']:.1f} |"
        lines.append(cells)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return mode_main(argv, __doc__.split("\n")[0], run_benchmark, markdown, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
