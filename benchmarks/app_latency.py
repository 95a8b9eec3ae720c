"""The app's latency: the wall time of every default step of a new user's first hour (issue #17: each
<= 60 s) and the server time of the Attribution page after selecting another test prediction (issue #7:
< 300 ms).

`python -m benchmarks.app_latency --journey` (the default) first runs the journey on a fresh workspace
with the app's defaults, timing each step the way the app calls it (`measure_journey`): the first-start
demo (MNIST MLP over 5 seeds, Grad-Dot, TRAK with its defaults), d-TDA, the first map (UMAP, numba
compilation included: a fresh process), the Evaluation page's LDS ground truth, the mislabel baseline,
validation scores and the pruning curve, the export, training again with 10 seeds and a wine CSV upload;
each step next to the cost model's estimate (`tda_explorer.estimates`) and the 1-minute load average.

`python -m benchmarks.app_latency [--n 10] [--method grad_dot]` prepares (or reuses) an mnist5k run
(logreg, one seed, the demo's default training) and the attributor's test scores in
`benchmarks/.workspace`, then drives the app with `streamlit.testing.v1.AppTest`: it opens the
Attribution page, warms the caches with one selection, and for each of `--n` other test ids sets the
fallback "Test prediction" selectbox and times `at.run()` — one full rerun of the page script in this
process, i.e. the server time (no browser, no websocket). The page's own "server time for this view"
caption (the explanation fragment alone) is recorded too. Results (median, min, max, every sample, the
1-minute load average before and after) go to `benchmarks/results/app_latency.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = ROOT / "benchmarks" / ".workspace"
RESULT = ROOT / "benchmarks" / "results" / "app_latency.json"
BUDGET_MS = 300.0


def prepare(method: str, arch: str, dataset: str = "mnist5k", workspace: Path = WORKSPACE) -> tuple[str, str]:
    """Train (or reuse) the run and compute (or reuse) `method`'s test scores; (run key, score key)."""
    from tda_explorer.attributors.scores import compute_scores
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.models import default_model_config
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, default_train_config, train_run

    ws = Workspace(workspace)
    splits = load_dataset(DatasetSpec(dataset))
    run = train_run(splits, default_model_config(arch), default_train_config(arch), [0], ws, LocalExecutor(1))
    settings = {"params": "head"} if method in ("grad_dot", "grad_cos", "tracin") else {}
    result = compute_scores(run, splits, method, settings, "test", ws)
    return run.key, result.key


STEP_BUDGET_S = 60.0
DTDA_DEFAULT = {"base": "influence", "measurement": "loss"}  # the d-TDA page's first choices
LDS_DEFAULT = {"n_subsets": 20, "alpha": 0.5, "seeds": (0,)}  # the Evaluation page's form defaults


def measure_journey(workspace: Path) -> list[dict]:
    """Run the default journey on `workspace` (should be empty) and time each step, next to the cost model's
    prediction made before it (`tda_explorer.estimates` with the shipped rates, no workspace calibration).

    Returns: `[{"step", "seconds", "estimated_s", "budget_s", "within_budget"}]` in journey order.
    """
    from sklearn.datasets import load_wine

    from tda_explorer.attributors.dtda import compute_dtda
    from tda_explorer.attributors.measurement import compute_test_scores
    from tda_explorer.attributors.scores import compute_scores
    from tda_explorer.backend.usefulness import curve_fractions, removal_mask, usefulness
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.demo import DEMO_ARCH, DEMO_ATTRIBUTORS, DEMO_DATASET, DEMO_SEEDS
    from tda_explorer.estimates import (
        estimate_attributor,
        estimate_dtda,
        estimate_map,
        estimate_retrainings,
        estimate_training,
        full_settings,
        load_factor,
        training_shape,
    )
    from tda_explorer.evaluation import LDSConfig, compute_lds_truth, compute_pruning_curve
    from tda_explorer.evaluation.mislabel import training_loss_scores
    from tda_explorer.maps import compute_map
    from tda_explorer.models import default_model_config
    from tda_explorer.store import Workspace
    from tda_explorer.store.exports import export_table, write_exports
    from tda_explorer.training import LocalExecutor, default_train_config, train_run

    ws = Workspace(workspace)
    steps: list[dict] = []

    def timed(name: str, fn, estimate=None):
        factor = load_factor()  # what the app scales the estimate by, at the step's start
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        est = None if estimate is None else round(estimate.seconds, 1)
        loaded = None if estimate is None else round(estimate.seconds * factor, 1)
        steps.append({"step": name, "seconds": round(seconds, 2), "estimated_s": est, "estimated_at_load_s": loaded,
                      "budget_s": STEP_BUDGET_S, "within_budget": seconds <= STEP_BUDGET_S,
                      "load_1min": round(os.getloadavg()[0], 2)})  # fmt: skip
        print(f"  {name}: {seconds:.1f} s (estimated {est} s idle, {loaded} s at the load; load "
              f"{os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
        return out

    splits = load_dataset(DatasetSpec(DEMO_DATASET))
    mcfg, tcfg = default_model_config(DEMO_ARCH), default_train_config(DEMO_ARCH)
    shape = training_shape(
        splits.train, mcfg, tcfg, DEMO_SEEDS, n_query=len(splits.test), n_val=len(splits.val)
    )
    run = timed(f"demo: train {DEMO_DATASET} {DEMO_ARCH} over {DEMO_SEEDS} seeds",
                lambda: train_run(splits, mcfg, tcfg, range(DEMO_SEEDS), ws, LocalExecutor(1)),
                estimate_training(shape, DEMO_SEEDS))  # fmt: skip
    for method, settings in DEMO_ATTRIBUTORS:  # as the app computes them: both measurements, one fit
        timed(f"{method} (the demo's default {settings}), test queries at the true label and the predicted class",
              lambda m=method, st=settings: compute_test_scores(run, splits, m, st, ws),
              estimate_attributor(method, full_settings(method, settings), shape))  # fmt: skip
    timed(f"d-TDA default ({DTDA_DEFAULT['base']}, {DTDA_DEFAULT['measurement']}), all {DEMO_SEEDS} seeds",
          lambda: compute_dtda(run, splits, DTDA_DEFAULT, "test", ws),
          estimate_dtda(full_settings("dtda", DTDA_DEFAULT), shape))  # fmt: skip
    timed("map: first UMAP of the penultimate features (numba compilation included)",
          lambda: compute_map(run, splits, "penultimate", False, workspace=ws),
          estimate_map(len(splits.train), first_in_process=True))  # fmt: skip
    lds = LDSConfig(**LDS_DEFAULT)
    timed(f"evaluation: LDS ground truth, the page's default ({lds.n_subsets} subsets, alpha {lds.alpha}, 1 seed)",
          lambda: compute_lds_truth(splits.train, splits.test, mcfg, tcfg, lds, ws, LocalExecutor(1)),
          estimate_retrainings(lds.n_subsets, lds.alpha, shape))  # fmt: skip
    timed("mislabels: own training loss (baseline score)", lambda: training_loss_scores(run, splits.train))
    val = timed("pruning: grad_dot validation scores (the cheapest attributor)",
                lambda: compute_scores(run, splits, "grad_dot", {"params": "head"}, "val", ws),
                estimate_attributor("grad_dot", full_settings("grad_dot", {"params": "head"}), shape))  # fmt: skip
    useful = usefulness(val.scores)
    fractions = curve_fractions(0.5)
    timed(f"pruning: curve up to 50% removed, 1 seed ({2 * len(fractions) - 1} retrainings)",
          lambda: compute_pruning_curve(useful, splits.train, splits.test, mcfg, tcfg, fractions, (0,),
                                        workspace=ws, executor=LocalExecutor(1)),
          estimate_retrainings(2 * len(fractions) - 1, 1 - sum(fractions) / len(fractions), shape))  # fmt: skip
    train = splits.train
    removed = removal_mask(useful, fraction=0.1)
    timed("export: CSV + JSON + Parquet of the pruned lists",
          lambda: write_exports(ws.exports_dir, "journey",
                                export_table(train.ids, train.labels.numpy(), train.class_names, useful, removed,
                                             ws.flags().get(run.key))))  # fmt: skip
    timed("setup: train again with 10 seeds (5 new)",
          lambda: train_run(splits, mcfg, tcfg, range(10), ws, LocalExecutor(1)),
          estimate_training(shape, 10 - DEMO_SEEDS))  # fmt: skip
    wine = load_wine(as_frame=True)
    frame = wine.data.assign(label=wine.target.map(lambda i: f"class_{i}"))
    csv = Path(workspace) / "wine.csv"
    frame.to_csv(csv, index=False)

    def upload() -> None:
        data = load_dataset(DatasetSpec("tabular", path=str(csv), options={"label_column": "label"}))
        train_run(
            data, default_model_config("mlp"), default_train_config("mlp"), range(5), ws, LocalExecutor(1)
        )

    timed("setup: wine CSV (178 rows) loaded and trained over 5 seeds", upload)
    return steps


def fragment_ms(at) -> float | None:
    """The page's own "server time for this view: N ms" caption, as a number (None when absent)."""
    for c in at.caption:
        m = re.match(r"server time for this view: (\d+) ms", c.value)
        if m:
            return float(m.group(1))
    return None


def measure(run_key: str, score_key: str, n: int, workspace: Path = WORKSPACE) -> dict:
    """Time `n` page reruns after changing the selected test prediction: `{"page_rerun_ms": [n],
    "fragment_ms": [n]}` (the fragment's own caption; None where absent). Sets `$TDA_WORKSPACE`, cwd."""
    from streamlit.testing.v1 import AppTest

    os.environ["TDA_WORKSPACE"] = str(workspace)
    os.environ["TDA_DEMO"] = "0"
    os.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.session_state["run_key"] = run_key
    at.session_state["score_key"] = score_key
    at.run()
    at.switch_page("views/attribution.py")
    at.run()  # first view: loads the run, the dataset, the prediction table and the scores (cached)
    if at.exception:
        raise RuntimeError(str(at.exception))
    picker = next(s for s in at.selectbox if s.label == "Test prediction")
    ids = list(picker.options)
    picker.set_value(ids[1])
    at.run()  # warm-up selection
    samples, fragments = [], []
    for i in range(n):
        picker = next(s for s in at.selectbox if s.label == "Test prediction")
        picker.set_value(ids[(i + 2) * 37 % len(ids)])
        start = time.perf_counter()
        at.run()
        samples.append(1000 * (time.perf_counter() - start))
        if at.exception:
            raise RuntimeError(str(at.exception))
        fragments.append(fragment_ms(at))
    return {"page_rerun_ms": samples, "fragment_ms": fragments}


def main(argv: list[str] | None = None) -> dict:
    """Prepare, measure, write `benchmarks/results/app_latency.json`; returns what was written."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10, help="selections timed (default 10)")
    p.add_argument(
        "--method", default="trak", help="attributor whose scores are shown (default: the demo's TRAK)"
    )
    p.add_argument("--arch", default="mlp", choices=["logreg", "mlp"])
    p.add_argument("--no-journey", dest="journey", action="store_false", help="only the selection latency")
    args = p.parse_args(argv)
    journey = None
    if args.journey:
        import shutil

        fresh = ROOT / "benchmarks" / ".journey-workspace"
        shutil.rmtree(fresh, ignore_errors=True)
        print("journey on a fresh workspace:", flush=True)
        journey_load = os.getloadavg()
        from tda_explorer.training.executor import in_process

        with in_process():  # as the app's background steps: nested executors (TRAK's "auto") in-process too
            journey = measure_journey(fresh)
        journey_load_after = os.getloadavg()
        shutil.rmtree(fresh, ignore_errors=True)
    run_key, score_key = prepare(args.method, args.arch)
    load_before = os.getloadavg()
    timing = measure(run_key, score_key, args.n)
    load_after = os.getloadavg()
    page = timing["page_rerun_ms"]
    frag = [f for f in timing["fragment_ms"] if f is not None]
    out = {
        "what": "server time of the Attribution page rerun after selecting another test prediction "
        "(AppTest, in process)",
        "dataset": "mnist5k",
        "model": args.arch,
        "method": args.method,
        "run_key": run_key,
        "score_key": score_key,
        "n": args.n,
        "median_ms": statistics.median(page),
        "min_ms": min(page),
        "max_ms": max(page),
        "fragment_median_ms": statistics.median(frag) if frag else None,
        "budget_ms": BUDGET_MS,
        "within_budget": statistics.median(page) < BUDGET_MS,
        "samples_ms": [round(x, 1) for x in page],
        "fragment_samples_ms": timing["fragment_ms"],
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if journey is not None:
        out["journey"] = {
            "steps": journey,
            "budget_s": STEP_BUDGET_S,
            "all_within_budget": all(s["within_budget"] for s in journey),
            "load_average_before": journey_load,
            "load_average_after": journey_load_after,
        }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(out, indent=2) + "\n")
    print(
        f"median {out['median_ms']:.0f} ms (min {out['min_ms']:.0f}, max {out['max_ms']:.0f}) over {args.n} "
        f"selections; fragment median {out['fragment_median_ms']} ms; load {load_before[0]:.2f} -> "
        f"{load_after[0]:.2f}; written to {RESULT.relative_to(ROOT)}"
    )
    return out


def markdown(result: dict) -> str:
    """The measurement as a short Markdown table (rendered into RESULTS.md by `benchmarks.report`)."""
    return "\n".join(
        [
            f"{result['what']}: {result['dataset']} + {result['model']}, {result['method']} scores computed, "
            f"{result['n']} selections of another test prediction, measured at {result['measured_at']} "
            f"({result['cpu_count']} CPUs, load {result['load_average_before'][0]:.2f} -> "
            f"{result['load_average_after'][0]:.2f}).",
            "",
            "| measure | median ms | min ms | max ms | budget ms |",
            "|---|---|---|---|---|",
            f"| whole page rerun | {result['median_ms']:.0f} | {result['min_ms']:.0f} | {result['max_ms']:.0f} "
            f"| {result['budget_ms']:.0f} |",
            f"| the explanation section alone | {result['fragment_median_ms']:.1f} | "
            f"{min(result['fragment_samples_ms']):.1f} | {max(result['fragment_samples_ms']):.1f} | – |",
        ]
        + journey_markdown(result.get("journey"))
    )


def journey_markdown(journey: dict | None) -> list[str]:
    """The journey's step timings as Markdown lines (empty without a journey)."""
    if not journey:
        return []
    load = journey["load_average_before"][0], journey["load_average_after"][0]
    lines = [
        "",
        f"Wall time of every default step of a new user's first hour, on a fresh workspace (load {load[0]:.2f} "
        f"-> {load[1]:.2f}); budget {journey['budget_s']:.0f} s each, "
        f"{'all within' if journey['all_within_budget'] else 'NOT all within'} budget:",
        "",
        "| step | seconds | estimated s, idle machine | estimated s, scaled by the load | load (1 min) "
        "| within 60 s |",
        "|---|---|---|---|---|---|",
    ]

    def cell(v) -> str:
        return "–" if v is None else f"{v}"

    lines += [
        f"| {s['step']} | {s['seconds']:.1f} | {cell(s.get('estimated_s'))} | {cell(s.get('estimated_at_load_s'))} "
        f"| {cell(s.get('load_1min'))} | {'yes' if s['within_budget'] else '**no**'} |"
        for s in journey["steps"]
    ]
    for key, what in (("estimated_s", "idle-machine"), ("estimated_at_load_s", "load-scaled")):
        ratios = [s[key] / s["seconds"] for s in journey["steps"] if s.get(key) and s["seconds"] > 0]
        if ratios:
            lines += ["", f"Cost model (`tda_explorer.estimates`, shipped rates), {what} estimate / measured: "
                          f"{min(ratios):.2f} to {max(ratios):.2f} over the {len(ratios)} estimated steps."]  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
