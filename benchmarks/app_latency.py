"""Server time of the Attribution page after selecting another test prediction (issue #7: < 300 ms).

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
    from tda_explorer.attributors.cache import compute_scores
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
    os.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.session_state["run_key"] = run_key
    at.session_state["score_key"] = score_key
    at.run()
    at.switch_page("pages/attribution.py")
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
    p.add_argument("--method", default="grad_dot", help="attributor whose scores are shown")
    p.add_argument("--arch", default="logreg", choices=["logreg", "mlp"])
    args = p.parse_args(argv)
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
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(out, indent=2) + "\n")
    print(
        f"median {out['median_ms']:.0f} ms (min {out['min_ms']:.0f}, max {out['max_ms']:.0f}) over {args.n} "
        f"selections; fragment median {out['fragment_median_ms']} ms; load {load_before[0]:.2f} -> "
        f"{load_after[0]:.2f}; written to {RESULT.relative_to(ROOT)}"
    )
    return out


if __name__ == "__main__":
    main()


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
    )
