"""Run a benchmark suite: LDS, mislabel AUC, time and peak memory of our attributors and dattri's.

Usage (from the repo root; `make bench` / `make bench-quick` call the first two):

    python -m benchmarks.run --suite full                 # mnist5k-logreg and mnist5k-mlp
    python -m benchmarks.run --suite quick                # digits + logreg, small, < 5 minutes
    python -m benchmarks.run --suite mnist5k-mlp --only trak-10,influence/ekfac --force
    python -m benchmarks.run --report                     # only rewrite benchmarks/RESULTS.md

Per suite (`benchmarks/suites.py`): the run (one model per seed), the noisy run (10% flipped labels) and
the LDS ground truth are computed once in the workspace `benchmarks/.workspace` (git-ignored) and reused.
Then per method row, two *steps*, each in a fresh worker process (`--no-isolate` runs them in-process):

* ours: `fit` + `score` (all queries x all training examples) timed with peak RSS sampled; LDS with a
  bootstrap 95% interval on the shared ground truth; then, separately timed, the mislabel experiment:
  fit on the noisy run, self-influence, ROC-AUC, next to the own-training-loss baseline of the same
  models.
* dattri: `run_dattri` on the same model(s), checkpoints, data and (for influence) the same damping;
  LDS on the same ground truth. Slow dattri methods are first probed on a reduced problem and skipped
  when the extrapolated time exceeds the method's budget (the estimate and the probe are recorded).

Results are written to `benchmarks/results/<suite>.json` after every step (atomically), keyed per row by
the row's definition; a rerun computes only rows (or sides) that are missing, failed or stale, unless
`--force`. Every timing carries the thread count and the 1-minute load average before/after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import (
    IsolatedError,
    default_threads,
    machine_info,
    measured,
    now,
    release_memory,
    run_isolated,
    set_threads,
    warm_up,
)
from benchmarks.suites import GROUPS, PEER_DAMPING_OURS, PEER_TRAK_REG_OURS, SUITES, Method, Suite

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
WORKSPACE_DIR = BENCH_DIR / ".workspace"
DEFAULT_TIMEOUT_S = 3 * 3600.0
FORMAT_VERSION = 1

Log = Callable[[str], None]


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ====================================================================================== JSON helpers
def _clean(obj: Any) -> Any:
    """JSON-able copy: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    return obj


def write_json(path: Path, data: dict) -> None:
    """Write `data` as indented JSON atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(_clean(data), f, indent=1, sort_keys=False, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ====================================================================================== preparation
def prepare(suite: Suite, workspace: Path, log: Log = _log, workers: int | None = None) -> dict:
    """Train (or reuse) the run and the noisy run and compute (or reuse) the LDS ground truth.

    Training jobs run on a `LocalExecutor(workers)` (None: its default, `$TDA_WORKERS` or min(CPUs, 4)).

    Returns:
        `{"run_key", "noisy_run_key", "truth_key", "run_metrics", "noisy_run_metrics", "truth"}` (JSON-able).
    """
    from tda_explorer.evaluation import compute_lds_truth
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, train_run

    ws = Workspace(workspace)
    executor = LocalExecutor(workers)

    def progress(what: str) -> Callable[[int, int, str], None]:
        last = [0.0]

        def report(done: int, total: int, msg: str) -> None:
            if time.monotonic() - last[0] > 15 or done == total:
                last[0] = time.monotonic()
                log(f"{suite.name}: {what} {done}/{total} ({msg})")

        return report

    splits = suite.splits()
    start = time.perf_counter()
    run = train_run(
        splits, suite.model_config, suite.train_config, suite.seeds, ws, executor, progress("training")
    )
    info: dict[str, Any] = {"run_key": run.key, "run_metrics": {str(s): m for s, m in run.metrics.items()}}
    if suite.noisy_seeds:
        noisy = suite.noisy_splits()
        noisy_run = train_run(
            noisy,
            suite.model_config,
            suite.train_config,
            suite.noisy_seeds,
            ws,
            executor,
            progress("noisy training"),
        )
        info["noisy_run_key"] = noisy_run.key
        info["noisy_run_metrics"] = {str(s): m for s, m in noisy_run.metrics.items()}
        info["n_flipped"] = len(noisy.flipped_ids)
    truth = compute_lds_truth(
        splits.train,
        splits.test,
        suite.model_config,
        suite.train_config,
        suite.lds_config,
        ws,
        executor,
        progress("LDS ground truth"),
    )
    info["truth_key"] = truth.key
    info["truth"] = {
        "n_subsets": truth.config.n_subsets,
        "alpha": truth.config.alpha,
        "seeds": list(truth.config.seeds),
        "subset_seed": truth.config.subset_seed,
        "n_train": len(truth.train_ids),
        "n_query": len(truth.query_ids),
        "mean_query_loss": float(truth.losses.mean()),
    }
    info["prepare_seconds"] = time.perf_counter() - start
    return info


def loss_baseline(suite: Suite, workspace: Path, noisy_run_key: str, n_models: int) -> dict:
    """Mislabel metrics of the own-training-loss baseline of the noisy run's first `n_models` seeds."""
    from tda_explorer.evaluation import mislabel_metrics, training_loss_scores
    from tda_explorer.store import Workspace
    from tda_explorer.training import load_run

    noisy = suite.noisy_splits()
    run = load_run(noisy_run_key, Workspace(workspace))
    scores = training_loss_scores(run, noisy.train, seeds=run.seeds[:n_models])
    out = mislabel_metrics(scores, noisy.flipped_ids, noisy.train.ids).to_dict()
    out["models"] = n_models
    return out


# ====================================================================================== steps
def _scores_path(workspace: Path, suite: Suite, label: str, side: str) -> Path:
    return Path(workspace) / "bench_scores" / suite.name / f"{label.replace('/', '_')}.{side}.npy"


def _lds_dict(scores: np.ndarray, truth) -> dict:
    from tda_explorer.evaluation import lds_score

    res = lds_score(scores, truth)
    return {**res.to_dict(), "median": float(np.nanmedian(res.per_query))}


def _task_inputs(task: dict) -> tuple[Suite, Method, Any, Any, Any]:
    """`(suite, method, splits, run, LDS truth)` of a method step, rebuilt from its JSON task."""
    from tda_explorer.evaluation import load_lds_truth
    from tda_explorer.store import Workspace
    from tda_explorer.training import load_run

    ws = Workspace(task["workspace"])
    run, truth = load_run(task["run_key"], ws), load_lds_truth(task["truth_key"], ws)
    suite = Suite.from_dict(task["suite"])
    return suite, Method(**task["method"]), suite.splits(), run, truth


def step_ours(task: dict) -> dict:
    """Our attributor: timed fit + score, LDS, then the mislabel experiment (see module docstring)."""
    import torch

    from tda_explorer.attributors import make_attributor
    from tda_explorer.evaluation import mislabel_metrics, training_loss_scores
    from tda_explorer.store import Workspace
    from tda_explorer.training import load_run

    suite, method, splits, run, truth = _task_inputs(task)
    attributor = make_attributor(method.name, **method.settings)
    release_memory()
    with measured() as cost:
        t0 = time.perf_counter()
        attributor.fit(run, splits.train)
        t1 = time.perf_counter()
        scores = attributor.score(splits.test)
        t2 = time.perf_counter()
    scores = scores.detach().cpu().numpy().astype(np.float32)
    out: dict[str, Any] = {
        "status": "ok",
        "attributor": attributor.config(),
        **cost.to_dict(),
        "fit_seconds": t1 - t0,
        "score_seconds": t2 - t1,
        "finite": bool(np.isfinite(scores).all()),
    }
    lambdas = getattr(attributor, "regularization_", None)
    if lambdas:  # TRAK: the lambda each model used (absolute, or relative to its mean eigenvalue)
        out["trak_regularization"] = float(np.mean(lambdas))
    info = getattr(attributor, "solve_info_", None)
    if info is not None:
        out["solve_info"] = _summarize_solve_info(info)
        out["weight_decay"] = getattr(attributor, "weight_decay_", None)
    out["lds"] = _lds_dict(np.nan_to_num(scores), truth)
    path = _scores_path(Path(task["workspace"]), suite, method.label, "ours")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, scores)
    del attributor, scores
    if method.mislabel and task.get("noisy_run_key"):
        noisy = suite.noisy_splits()
        noisy_run = load_run(task["noisy_run_key"], Workspace(task["workspace"]))
        attributor = make_attributor(method.name, **method.settings)
        release_memory()
        with measured() as mcost:
            attributor.fit(noisy_run, noisy.train)
            self_inf = attributor.self_influence()
        self_inf = torch.as_tensor(self_inf).float()
        base = training_loss_scores(noisy_run, noisy.train, seeds=noisy_run.seeds[: method.models])
        out["mislabel"] = {
            **mislabel_metrics(self_inf, noisy.flipped_ids, noisy.train.ids).to_dict(),
            "baseline": mislabel_metrics(base, noisy.flipped_ids, noisy.train.ids).to_dict(),
            "score": "self_influence",
            "cost": mcost.to_dict(),
        }
    return out


def _summarize_solve_info(info: list[dict]) -> list[dict]:
    """Per seed: damping and, for iterative solvers, the solves' iterations / residuals / convergence."""
    out = []
    for member in info:
        d = {"damping": member.get("damping")}
        solves = member.get("solves")
        if solves:
            d["solves"] = len(solves)
            d["max_iterations"] = max(s["iterations"] for s in solves)
            d["max_residual"] = max(s["residual"] for s in solves)
            d["all_converged"] = all(s["converged"] for s in solves)
        out.append(d)
    return out


def _peer_inputs(suite: Suite, method: Method, run) -> tuple[list[dict], list[float] | None]:
    """The checkpoints (state dicts) and TracIn weights dattri reads for this method."""
    seed0 = run.seeds[0]
    if method.peer_checkpoints == "trajectory":
        ckpts = run.checkpoints[seed0]
        return [c.state for c in ckpts], [float(c.lr) for c in ckpts]
    if method.peer_checkpoints == "models":
        return [run.checkpoints[s][-1].state for s in run.seeds[: method.models]], None
    return [run.checkpoints[seed0][-1].state], None


def step_dattri(task: dict) -> dict:
    """dattri's counterpart: optional probe + budget check, then the full run, LDS."""
    import torch

    from benchmarks.peers.dattri_runner import run_dattri
    from tda_explorer.models import build_model

    suite, method, splits, run, truth = _task_inputs(task)
    ckpts, lrs = _peer_inputs(suite, method, run)
    kwargs = dict(method.peer_kwargs)
    if kwargs.get("damping") == PEER_DAMPING_OURS:
        kwargs["damping"] = task["damping"]
    if kwargs.get("trak_regularization") == PEER_TRAK_REG_OURS:
        n_params = sum(p.numel() for p in run.model().parameters() if p.requires_grad)
        kwargs["trak_regularization"] = float(task["trak_regularization"]) / n_params
    train_x, train_y = splits.train.inputs, splits.train.labels
    test_x, test_y = splits.test.inputs, splits.test.labels

    def factory():
        return build_model(run.model_config, run.input_shape, run.n_classes)

    def call(n_test: int | None = None, extra: dict | None = None):
        kw = dict(kwargs)
        if extra:
            kw["method_kwargs"] = {**kw.get("method_kwargs", {}), **extra}
        tx, ty = (test_x, test_y) if n_test is None else (test_x[:n_test], test_y[:n_test])
        release_memory()
        load = os.getloadavg()[0]
        res = run_dattri(method.peer, factory, ckpts, train_x, train_y, tx, ty, lrs=lrs, **kw)
        return res, load

    out: dict[str, Any] = {
        "status": "ok",
        "damping": kwargs.get("damping"),
        "trak_regularization": kwargs.get("trak_regularization"),
    }
    if method.peer_probe is not None and method.peer_budget_s is not None:
        probe = method.peer_probe
        points = []
        for v in probe["values"]:
            if probe["kind"] == "kwarg":
                res, load = call(extra={probe["name"]: v})
            else:
                res, load = call(n_test=int(v))
            points.append(
                {"value": v, "seconds": res.seconds, "peak_rss_mb": res.peak_rss_mb, "load_1m": load}
            )
        full = probe.get("full", len(test_x))
        estimate = _extrapolate([(p["value"], p["seconds"]) for p in points], full)
        out["probe"] = {**probe, "points": points, "estimated_seconds": estimate}
        if estimate > method.peer_budget_s:
            out.update(
                status="skipped",
                reason=f"too slow, estimated {estimate:.0f} s (> budget {method.peer_budget_s:.0f} s)",
                estimated_seconds=estimate,
            )
            return out
    res, load = call()
    scores = res.scores
    out.update(
        seconds=res.seconds,
        peak_rss_mb=res.peak_rss_mb,
        load_1m_before=load,
        load_1m_after=os.getloadavg()[0],
        threads=torch.get_num_threads(),
        date=now(),
        settings=res.settings,
        finite=bool(np.isfinite(scores).all()),
    )
    out["lds"] = _lds_dict(np.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0), truth)
    path = _scores_path(Path(task["workspace"]), suite, method.label, "dattri")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, scores)
    return out


def _extrapolate(points: list[tuple[float, float]], full: float) -> float:
    """Seconds at `full` from a straight line through the last two (size, seconds) probe points.

    With a non-positive slope (noise) it falls back to proportional scaling of the largest probe.
    """
    (x1, t1), (x2, t2) = points[-2], points[-1]
    slope = (t2 - t1) / (x2 - x1) if x2 != x1 else 0.0
    if slope <= 0:
        return t2 * full / x2
    return t2 + slope * (full - x2)


STEPS: dict[str, Callable[[dict], dict]] = {"ours": step_ours, "dattri": step_dattri}


def execute_task(task: dict) -> dict:
    """Run one step (`task["side"]` in STEPS) with the task's thread count; errors become a failed result."""
    set_threads(task["threads"])
    try:
        warm_up()
        return STEPS[task["side"]](task)
    except Exception as e:  # a failing method must not stop the suite; the row records why
        traceback.print_exc()
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}"}


def _task_main(path: str) -> int:
    task = json.loads(Path(path).read_text())
    write_json(Path(task["out"]), execute_task(task))
    return 0


def run_step(task: dict, isolate: bool, timeout: float | None) -> dict:
    """Run a step in a worker process (`isolate`) or in this one; returns its result dict."""
    if not isolate:
        return execute_task(task)
    with tempfile.TemporaryDirectory(prefix="tda-bench-") as tmp:
        task = {**task, "out": str(Path(tmp) / "out.json")}
        task_path = Path(tmp) / "task.json"
        task_path.write_text(json.dumps(_clean(task)))
        start = time.perf_counter()
        try:
            run_isolated(["--task", str(task_path)], timeout=timeout)
        except IsolatedError as e:
            return {"status": "failed", "reason": e.reason, "wall_seconds": time.perf_counter() - start}
        result = read_json(Path(task["out"]))
        return result or {"status": "failed", "reason": "worker wrote no result"}


# ====================================================================================== suite
def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def _row_summary(row: dict) -> None:
    ours, peer = row.get("ours") or {}, row.get("dattri") or {}
    ok = ours.get("status") == "ok" and peer.get("status") == "ok"
    row["time_ratio"] = _ratio(ours.get("seconds"), peer.get("seconds")) if ok else None
    row["memory_ratio"] = _ratio(ours.get("peak_rss_mb"), peer.get("peak_rss_mb")) if ok else None
    row["lds_difference"] = (ours["lds"]["mean"] - peer["lds"]["mean"]) if ok else None


def _needs(side: dict | None, force: bool) -> bool:
    return force or side is None or side.get("status") not in ("ok", "skipped")


def run_suite(
    suite: Suite,
    *,
    results_dir: Path = RESULTS_DIR,
    workspace: Path = WORKSPACE_DIR,
    only: Sequence[str] | None = None,
    force: bool = False,
    threads: int | None = None,
    isolate: bool | None = None,
    peers: bool = True,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    workers: int | None = None,
    log: Log = _log,
) -> dict:
    """Run (or resume) one suite and write `results_dir/<suite.name>.json`; returns the document.

    Args:
        suite: the suite.
        results_dir: where the JSON goes.
        workspace: the artifact workspace (runs, ground truth, score matrices).
        only: row labels to (re)compute; others keep their cached results (None = all rows).
        force: recompute the selected rows even if cached.
        threads: torch intra-op threads for every measured step (default `default_threads()`).
        isolate: run every step in a fresh worker process (clean RSS baseline, hard timeout); None = the
            suite's own choice (`Suite.isolate`).
        peers: also run the dattri counterparts.
        timeout: per-step time limit in seconds (isolated steps only).
        workers: training processes for the runs and the ground truth (None: `LocalExecutor` default).
        log: progress messages.
    """
    threads = threads or default_threads()
    isolate = suite.isolate if isolate is None else isolate
    results_dir, workspace = Path(results_dir), Path(workspace)
    path = results_dir / f"{suite.name}.json"
    unknown = sorted(set(only or ()) - {m.label for m in suite.methods})
    if unknown:
        raise SystemExit(
            f"suite {suite.name!r} has no row(s) {unknown}; rows: {[m.label for m in suite.methods]}"
        )
    doc = read_json(path) or {}
    if doc.get("truth_key_config") != suite.truth_key() or doc.get("format") != FORMAT_VERSION:
        if doc:
            log(f"{suite.name}: {path.name} was made with another data/training/LDS config; starting afresh")
        doc = {}
    old_rows = {r["label"]: r for r in doc.get("rows", [])}
    log(f"{suite.name}: preparing run, noisy run and LDS ground truth (workspace {workspace})")
    prep = prepare(suite, workspace, log, workers)
    doc.update(
        format=FORMAT_VERSION,
        suite=suite.name,
        description=suite.description,
        truth_key_config=suite.truth_key(),
        config=suite.to_dict(),
        machine=machine_info(threads),
        updated=now(),
        preparation=prep,
        targets=suite.targets,
        isolated=isolate,
    )
    if "noisy_run_key" in prep:
        doc["baseline"] = loss_baseline(suite, workspace, prep["noisy_run_key"], 1)
    rows = []
    for method in suite.methods:
        row = old_rows.get(method.label)
        if row is None or row.get("key") != method.key():
            row = {"label": method.label, "key": method.key(), "method": method.to_dict()}
        rows.append(row)
    doc["rows"] = rows
    write_json(path, doc)

    base_task = {
        "suite": suite.to_dict(),
        "workspace": str(workspace),
        "threads": threads,
        "run_key": prep["run_key"],
        "noisy_run_key": prep.get("noisy_run_key"),
        "truth_key": prep["truth_key"],
    }
    for row, method in zip(rows, suite.methods, strict=True):
        if only and method.label not in only:
            continue
        if _needs(row.get("ours"), force):
            log(f"{suite.name}: ours   {method.label} ...")
            row["ours"] = run_step(
                {**base_task, "side": "ours", "method": method.to_dict()}, isolate, timeout
            )
            _report_side(log, suite, method, "ours", row["ours"])
            _row_summary(row)
            write_json(path, doc)
        if peers and method.peer and _needs(row.get("dattri"), force):
            task = {**base_task, "side": "dattri", "method": method.to_dict()}
            if method.peer_kwargs.get("damping") == PEER_DAMPING_OURS:
                task["damping"] = _our_shift(row.get("ours") or {})
                if task["damping"] is None:
                    row["dattri"] = {"status": "failed", "reason": "needs our damping, but our row failed"}
                    write_json(path, doc)
                    continue
            if method.peer_kwargs.get("trak_regularization") == PEER_TRAK_REG_OURS:
                task["trak_regularization"] = (row.get("ours") or {}).get("trak_regularization")
                if task["trak_regularization"] is None:
                    row["dattri"] = {
                        "status": "failed",
                        "reason": "needs our TRAK lambda, but our row failed",
                    }
                    write_json(path, doc)
                    continue
            log(f"{suite.name}: dattri {method.label} ({method.peer}) ...")
            row["dattri"] = run_step(task, isolate, timeout)
            _report_side(log, suite, method, "dattri", row["dattri"])
            _row_summary(row)
            write_json(path, doc)
    for row in rows:
        _row_summary(row)
    doc["updated"] = now()
    write_json(path, doc)
    return doc


def _our_shift(ours: dict) -> float | None:
    """Total diagonal shift our influence attributor used: weight decay + mean damping over layers/seeds."""
    info = ours.get("solve_info")
    if ours.get("status") != "ok" or not info:
        return None
    values = []
    for member in info:
        d = member.get("damping")
        values += list(d.values()) if isinstance(d, dict) else [d]
    return float(ours.get("weight_decay") or 0.0) + float(np.mean(values))


def _report_side(log: Log, suite: Suite, method: Method, side: str, res: dict) -> None:
    if res.get("status") != "ok":
        log(f"{suite.name}: {side:6s} {method.label}: {res.get('status')} ({res.get('reason')})")
        return
    mis = res.get("mislabel", {}).get("auc")
    log(
        f"{suite.name}: {side:6s} {method.label}: LDS {res['lds']['mean']:.3f} "
        f"[{res['lds']['ci_low']:.3f}, {res['lds']['ci_high']:.3f}]  {res['seconds']:.1f} s  "
        f"{res['peak_rss_mb']:.0f} MB  load {res['load_1m_before']:.1f}"
        + (f"  mislabel AUC {mis:.3f}" if mis is not None else "")
    )


# ====================================================================================== CLI
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m benchmarks.run` (see module docstring)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=sorted(GROUPS), default="quick", help="suite group or suite name")
    p.add_argument("--only", action="append", default=[], help="row label(s), comma-separated; repeatable")
    p.add_argument("--force", action="store_true", help="recompute the selected rows even if cached")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: CPUs, at most 4)")
    p.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run each step in a fresh process (default: the suite's choice; quick runs in-process)",
    )
    p.add_argument("--no-peers", action="store_true", help="skip the dattri counterparts")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per-step limit (s)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--workspace", type=Path, default=WORKSPACE_DIR)
    p.add_argument("--report", action="store_true", help="only rewrite RESULTS.md from the JSON files")
    p.add_argument(
        "--prepare", action="store_true", help="only train the runs and compute the LDS ground truth"
    )
    p.add_argument("--task", help=argparse.SUPPRESS)  # worker mode: run one step described by a JSON file
    args = p.parse_args(argv)
    if args.task:
        return _task_main(args.task)
    from benchmarks.report import write_report

    if args.prepare:
        for name in GROUPS[args.suite]:
            prepare(SUITES[name], args.workspace)
        return 0
    if not args.report:
        only = [s.strip() for part in args.only for s in part.split(",") if s.strip()] or None
        for name in GROUPS[args.suite]:
            suite = SUITES[name]
            labels = None if only is None else [x for x in only if x in {m.label for m in suite.methods}]
            if only is not None and not labels:
                continue
            run_suite(
                suite,
                results_dir=args.results_dir,
                workspace=args.workspace,
                only=labels,
                force=args.force,
                threads=args.threads,
                isolate=args.isolate,
                peers=not args.no_peers,
                timeout=args.timeout,
            )
    out = write_report(args.results_dir, args.results_dir.parent / "RESULTS.md")
    _log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
