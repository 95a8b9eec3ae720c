"""AirRep distilled from a teacher (issue 18 item 5): group LDS vs the number of teacher-labelled subsets.

    python -m benchmarks.airrep_teacher                      # 256, 1024, 4096, 16384 subsets
    python -m benchmarks.airrep_teacher --subsets 256 1024   # a shorter curve

Setting (shared with `benchmarks.airrep`): MNIST 5k (4,000 train / 500 val / 500 test), the default MLP
over 10 seeds; LDS ground truth = 100 random half subsets (seed 0) retrained once each, the 500 test
queries; the evaluation is group LDS against that real retraining.

Teacher: TRAK over the run's 10 seeds (count-sketch projection, k = 2,048), fitted once. Its scores on the
500 validation queries label M random half subsets (seed 1, asserted disjoint from the LDS subsets):
label(x, S) = sum of the teacher's scores over S's members, normalised per query
(`attributors.airrep.teacher`, cached as "airrep_teacher"). The test queries and the LDS subsets are never
seen in training. The teacher's own group LDS on the test queries (sum of its scores) is the student's
ceiling, reported beside.

Student: AirRep with attention pooling and the MLP image backbone (`ENCODER`), trained on the teacher's
labels for every M with the same budget of optimisation steps (`STEPS`, so the curve shows the effect of
more distinct subsets, not of more compute; epochs = `ceil(STEPS / steps per epoch)`, the last one cut at
`max_steps`, early stopping on the held-out teacher labels).

Inference: wall seconds to score the 500 test queries against the 4,000 training examples with fitted
attributors (AirRep: embed + one matmul; TRAK: query gradients over 10 models, sketch, kernel), median of
`REPEATS`, with the load average. One-time cost of the student = the teacher's (its fit, plus training its
9 extra models) + the teacher's label scores + the encoder training.

Results: `benchmarks/results/airrep.json` under the key "teacher" and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from benchmarks.airrep import (
    ENCODER,
    N_MODELS,
    RESULTS,
    WORKSPACE,
    loadavg,
    progress_printer,
    save_result,
    setup,
    summary,
    timed,
)
from benchmarks.console import log
from tda_explorer.attributors import make_attributor
from tda_explorer.attributors.airrep import check_disjoint_subsets
from tda_explorer.attributors.scores import compute_scores
from tda_explorer.evaluation import lds_groups, lds_score

TEACHER = ("trak", {"n_models": N_MODELS, "proj_dim": 2048, "proj_type": "sjlt"})
SUBSETS = (256, 1024, 4096, 16384)
#: Optimisation steps per student; see the module docstring.
STEPS = 300
REPEATS = 5
#: Per step: 32 subsets x 100 label queries, the subsets' members sampled down to 1,024 (f over S ∩ sample):
#: at load ~14 on the 2 cores a step took ~1.7 s against ~4.5 s with all ~4,000 members re-embedded.
TRAINING = {"subsets_per_step": 32, "queries_per_step": 100, "members_per_step": 1024, "patience": 8}


def steps_per_epoch(n_subsets: int, n_queries: int, holdout: float = 0.2) -> int:
    """Steps of one epoch of `train.train_encoder` (its held-out split rounded the same way)."""
    m_train = n_subsets - min(n_subsets - 2, max(2, round(holdout * n_subsets)))
    q_train = n_queries - min(n_queries - 2, max(2, round(holdout * n_queries)))
    return math.ceil(m_train / TRAINING["subsets_per_step"]) * math.ceil(
        q_train / TRAINING["queries_per_step"]
    )


def _score_once(score):
    """`score(queries)`, computed once per query set (by ids) and reused."""
    memo: dict = {}

    def wrapped(queries):
        key = tuple(queries.ids)
        if key not in memo:
            memo[key] = score(queries)
        return memo[key]

    return wrapped


def _fitted_teacher(st) -> tuple:
    """Fit the teacher, time its scores on the test queries; `(teacher, median seconds, info)`."""
    log("teacher: TRAK-10 (sjlt, k 2048)")
    splits, run = st.splits, st.run
    teacher = make_attributor(TEACHER[0], progress=progress_printer("teacher"), **TEACHER[1])
    teacher.validation, teacher.workspace = splits.val, st.ws  # as compute_scores sets them (damping "auto")
    load = loadavg()
    start = time.perf_counter()
    teacher.fit(run, splits.train)
    teacher_fit = time.perf_counter() - start
    t_scores, t_med, t_times, _ = timed(lambda: teacher.score(splits.test), REPEATS)
    teacher.score = _score_once(teacher.score)  # the label queries are scored once for every M
    teacher_lds = lds_score(t_scores, st.truth)
    info = {
        "method": TEACHER[0],
        "settings": TEACHER[1],
        "group_lds": summary(teacher_lds),  # sum of member scores: equals its LDS
        "fit_seconds": round(teacher_fit, 2),
        "extra_models_seconds": round(sum(run.metrics[s]["seconds"] for s in run.seeds[1:]), 1),
        "inference_seconds": round(t_med, 4),
        "inference_times": [round(t, 4) for t in t_times],
        "loadavg": load,
    }
    log(f"teacher: group LDS {teacher_lds.mean:.4f}, fit {teacher_fit:.1f} s, score 500 q {t_med:.2f} s")
    return teacher, t_med, info


def label_teacher(method: str, settings: dict, scores, val_ids) -> object:
    """An attributor that only answers `score(val)` with the given scores `[n_val, N]` (it names and keys the
    teacher labels; never fitted here)."""
    teacher = make_attributor(method, **settings)
    teacher.fitted_ = True
    cached = torch.as_tensor(scores)
    val_ids = tuple(val_ids)

    def score(queries):
        if tuple(queries.ids) != val_ids:
            raise ValueError("the cached teacher only has the label queries' scores")
        return cached

    teacher.score = score
    return teacher


def fit_student(attr, st, masks: torch.Tensor) -> tuple[dict, dict]:
    """Fit a student on the run, check its label subsets are not LDS subsets, time scoring the test queries.

    Returns `(row fields both AirRep curves store, {"glds", "median", "fit_wall", "score_load", "history"})`.
    """
    splits, truth = st.splits, st.truth
    load = loadavg()
    start = time.perf_counter()
    attr.fit(st.run, splits.train)
    fit_wall = time.perf_counter() - start
    check_disjoint_subsets(attr.data_.masks, truth.masks)  # raises if a training subset is an LDS one
    scores, med, times, score_load = timed(lambda: attr.score(splits.test), REPEATS)
    glds = lds_groups(attr.score_groups(splits.test, masks), truth)
    hist, best = attr.trained_.history, attr.trained_.best_epoch
    row = {
        "group_lds": summary(glds),
        "lds": summary(lds_score(scores, truth)),
        "epochs_run": len(hist) - 1,
        "best_epoch": best,
        "heldout_lds_vs_teacher_labels_best": round(hist[best + 1]["heldout_lds"], 4),
        "label_seconds": round(attr.data_.seconds, 2),
        "train_seconds": round(attr.trained_.seconds, 1),
        "inference_seconds": round(med, 4),
        "inference_times": [round(t, 4) for t in times],
        "loadavg": load,
        "data_key": attr.data_.key,
        "encoder_key": attr.trained_.key,
        "training_subsets_disjoint_from_lds_subsets": True,
    }
    return row, {"glds": glds, "median": med, "fit_wall": fit_wall, "score_load": score_load, "history": hist}


def _cached_teacher(st) -> tuple:
    """The teacher's label scores from the workspace's score cache (`compute_scores`, split "val"), no fit
    and no timing: for extra curve points next to a run that measured the teacher."""
    splits, run = st.splits, st.run
    cached = compute_scores(run, splits, TEACHER[0], TEACHER[1], "val", st.ws, progress_printer("teacher"))
    teacher = label_teacher(*TEACHER, cached.scores, splits.val.ids)
    info = {
        "method": TEACHER[0],
        "settings": TEACHER[1],
        "label_scores": "cached (compute_scores, split val)",
        "extra_models_seconds": round(sum(run.metrics[s]["seconds"] for s in run.seeds[1:]), 1),
    }
    return teacher, None, info


def run_benchmark(
    subsets: tuple[int, ...],
    workers: int,
    workspace: Path,
    out: Path,
    steps: int,
    key: str = "teacher",
    cached_teacher: bool = False,
) -> dict:
    st = setup(workspace, workers)
    splits, truth = st.splits, st.truth
    masks = torch.from_numpy(truth.masks)

    if cached_teacher:
        teacher, t_med, info = _cached_teacher(st)
    else:
        teacher, t_med, info = _fitted_teacher(st)
    results: dict = {
        "benchmark": "airrep_teacher",
        "setting": st.description,
        "teacher": info,
        "student": {"encoder": ENCODER, "training": TRAINING, "pooling": "attention", "steps_budget": steps},
        "curve": [],
    }
    teacher_lds = info.get("group_lds", {}).get("mean")
    teacher_once = info.get("fit_seconds", 0.0) + info["extra_models_seconds"]

    for m in subsets:
        epochs = max(1, math.ceil(steps / steps_per_epoch(m, len(splits.val))))
        name = f"airrep <- trak ({m} subsets)"
        log(f"{name}: {epochs} epochs")
        attr = make_attributor(
            "airrep",
            encoder=ENCODER,
            data={"n_subsets": m},
            training={**TRAINING, "epochs": epochs, "max_steps": steps},
            workspace=st.ws,
            teacher=teacher,
            progress=progress_printer(name),
        )
        common, fitted = fit_student(attr, st, masks)
        glds, med, hist = fitted["glds"], fitted["median"], fitted["history"]
        once = teacher_once + attr.data_.seconds + attr.trained_.seconds
        row = {
            "n_subsets": m,
            **common,
            "epochs": epochs,
            "steps": min(steps, (len(hist) - 1) * steps_per_epoch(m, len(splits.val))),
            "one_time_seconds": round(once, 1),
            "inference_speedup_vs_teacher": None if t_med is None else round(t_med / med, 1),
            "targets": {
                "group_lds_ge_trak10": None if teacher_lds is None else glds.mean >= teacher_lds,
                "inference_ge_50x_faster": None if t_med is None else t_med / med >= 50,
            },
        }
        results["curve"].append(row)
        log(f"{name}: group LDS {glds.mean:.4f} (teacher {teacher_lds}), score {med:.4f} s")
        results["loadavg_end"] = loadavg()
        results["markdown"] = markdown(results)
        save_result(out, key, results)  # after every point: a long curve keeps what it measured
    print(results["markdown"])
    return results


def markdown(results: dict) -> str:
    t = results["teacher"]
    rows = [
        "### AirRep distilled from TRAK-10 (sjlt, k 2048) on mnist5k + mlp",
        "",
        f"Student: attention pooling, encoder {results['student']['encoder']}, at most "
        f"{results['student']['steps_budget']} optimisation steps with {results['student']['training']} "
        "(early stopping on held-out teacher labels).",
        "",
        "| teacher-labelled subsets | group LDS (95% CI) | LDS | epochs run | encoder training (s) | "
        "one-time (s) | inference 500 q (s) | speed-up vs teacher | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["curve"]:
        gl = r["group_lds"]
        rows.append(
            f"| {r['n_subsets']} | {gl['mean']:.3f} [{gl['ci_low']:.3f}, {gl['ci_high']:.3f}] "
            f"| {r['lds']['mean']:.3f} | {r['epochs_run']} | {r['train_seconds']:.0f} | {r['one_time_seconds']:.0f} "
            f"| {r['inference_seconds']:.3f} | {r['inference_speedup_vs_teacher']}x | {r['loadavg'][0]} |"
        )
    if "group_lds" in t:  # measured here (not with --cached-teacher)
        g = t["group_lds"]
        rows.append(
            f"| teacher: TRAK-10 (sjlt, k 2048) | {g['mean']:.3f} [{g['ci_low']:.3f}, {g['ci_high']:.3f}] "
            f"| {g['mean']:.3f} | - | - | {t['fit_seconds'] + t['extra_models_seconds']:.0f} "
            f"| {t['inference_seconds']:.3f} | 1x | {t['loadavg'][0]} |"
        )
    rows += ["", f"- load average at the end: {results.get('loadavg_end')}"]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--subsets", type=int, nargs="+", default=list(SUBSETS), help="teacher-labelled subsets"
    )
    parser.add_argument("--steps", type=int, default=STEPS, help="optimisation steps per student")
    parser.add_argument("--workers", type=int, default=2, help="retraining processes (default 2)")
    parser.add_argument("--key", default="teacher", help="key of the result in the JSON file")
    parser.add_argument(
        "--cached-teacher",
        action="store_true",
        help="label with the workspace's cached teacher scores of the validation split (no teacher fit/timing)",
    )
    parser.add_argument("--workspace", type=Path, default=WORKSPACE)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.subsets) < 2 or args.steps < 1:
        parser.error("--subsets must be >= 2 and --steps >= 1")
    run_benchmark(
        tuple(args.subsets), args.workers, args.workspace, args.out, args.steps, args.key, args.cached_teacher
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
