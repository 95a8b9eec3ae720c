"""AirRep on the attributed model's features, distilled from a teacher: group LDS vs teacher-labelled subsets.

    python -m benchmarks.airrep_features --subsets 256 1024 4096 16384 --threads 1

Setting (shared with `benchmarks.airrep`): MNIST 5k (4,000 train / 500 val / 500 test), the default MLP
over 10 seeds; LDS ground truth = 100 random half subsets (seed 0) retrained once each, the 500 test
queries. Labels: the teacher's scores of the 500 validation queries summed over M random half subsets
(seed 1, asserted disjoint from the LDS subsets), z-scored per query (`attributors.airrep.teacher`). The
test queries and the LDS subsets are never seen in training.

Teacher: TRAK-10 = `trak` n_models 10, proj_dim 2048, sjlt (its validation scores from the workspace's
score cache, made by `benchmarks.airrep_teacher`; its test LDS, fit and timings as measured there,
airrep.json "teacher").

Student: `airrep` with `encoder={"backbone": "model_features", ...}` (`STUDENT`): the frozen last-layer
gradient features of the run's 10 seeds, whitened per seed and projected to `feature_dim`, embedded by a
one-hidden-layer MLP with a linear skip (orthonormal at initialisation) to `dim` = 1024, no label
coupling (the backbone's defaults, spelled out), attention pooling; `STEPS` optimisation steps at most,
early stopping on held-out teacher labels. Inference = wall seconds of `score(test)` (features of the 500
queries under the 10 models, the encoder, one `[500 x 1024] @ [1024 x 4000]` product), median of
`REPEATS`, load recorded.

Results: `benchmarks/results/airrep.json` under `--key` (default "features_sjlt").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.airrep import (
    BASELINES,
    RESULTS,
    WORKSPACE,
    loadavg,
    progress_printer,
    save_result,
    setup,
)
from benchmarks.airrep_teacher import fit_student, label_teacher
from benchmarks.console import log
from tda_explorer.attributors import make_attributor
from tda_explorer.attributors.scores import compute_scores

SJLT_NAME = "trak-10 (sjlt, k 2048)"
SUBSETS = (256, 1024, 4096, 16384)
STEPS = 200
REPEATS = 5
STUDENT = {
    "backbone": "model_features",
    "feature_dim": 1024,
    "dim": 1024,
    "hidden": 256,
    "depth": 1,
    "label_coupling": False,
}
TRAINING = {
    "subsets_per_step": 32,
    "queries_per_step": 100,
    "members_per_step": 1024,
    "lr": 3e-5,
    "epochs": 1000,
    "patience": 3,
    "warmup_steps": 20,
}


def load_teacher(st) -> tuple[object, dict]:
    """`(label teacher, info)`: TRAK-10 sjlt's cached validation scores; info = its measured LDS and timings."""
    method, settings = BASELINES[SJLT_NAME]
    val = compute_scores(
        st.run, st.splits, method, settings, "val", st.ws, progress_printer("teacher")
    ).scores
    # measured by benchmarks.airrep_teacher (fit, LDS on the test queries, 5 timings at load ~15)
    measured = json.loads(RESULTS.read_text())["teacher"]["teacher"]
    info = {"name": SJLT_NAME, **measured, "source": 'airrep.json["teacher"]["teacher"]'}
    return label_teacher(method, settings, np.asarray(val, dtype=np.float32), st.splits.val.ids), info


def run_benchmark(subsets, steps: int, key: str, workspace: Path, out: Path, threads: int = 2) -> dict:
    st = setup(workspace, 2)
    torch.set_num_threads(threads)
    truth = st.truth
    masks = torch.from_numpy(truth.masks)
    teacher, info = load_teacher(st)
    log(f"teacher {info['name']}: LDS {info['group_lds']['mean']:.4f}")
    results: dict = {
        "benchmark": "airrep_features",
        "setting": st.description,
        "teacher": info,
        "student": {"encoder": STUDENT, "training": TRAINING, "pooling": "attention", "steps_budget": steps},
        "curve": [],
    }
    t_med, t_lds = info["inference_seconds"], info["group_lds"]["mean"]
    teacher_once = info["fit_seconds"] + info["extra_models_seconds"]
    for m in subsets:
        name = f"airrep(model features) <- trak-10 ({m} subsets)"
        attr = make_attributor(
            "airrep",
            encoder=STUDENT,
            data={"n_subsets": m},
            training={**TRAINING, "max_steps": steps},
            workspace=st.ws,
            teacher=teacher,
            progress=progress_printer(name),
        )
        common, fitted = fit_student(attr, st, masks)
        glds, med, hist = fitted["glds"], fitted["median"], fitted["history"]
        row = {
            "n_subsets": m,
            **common,
            "heldout_lds_vs_teacher_labels_init": round(hist[0]["heldout_lds"], 4),
            "fit_wall_seconds": round(fitted["fit_wall"], 1),
            "one_time_seconds": round(teacher_once + attr.data_.seconds + attr.trained_.seconds, 1),
            "inference_loadavg": fitted["score_load"],
            "inference_speedup_vs_teacher": round(t_med / med, 1),
            "targets": {
                "group_lds_ge_teacher": glds.mean >= t_lds,
                "inference_ge_50x_faster": t_med / med >= 50,
            },
        }
        results["curve"].append(row)
        log(f"{name}: group LDS {glds.mean:.4f} LDS {row['lds']['mean']:.4f} (teacher {t_lds:.4f}), "
            f"train {row['train_seconds']} s, score {med:.3f} s")  # fmt: skip
        results["loadavg_end"] = loadavg()
        save_result(out, key, results)  # after every point: a long curve keeps what it measured
    return results


def markdown(results: dict) -> str:
    """The curve as a Markdown table (rendered by `benchmarks.report`)."""
    t, student = results["teacher"], results["student"]
    g = t["group_lds"]
    rows = [
        f"Student: `airrep`, attention pooling, encoder {student['encoder']}, at most "
        f"{student['steps_budget']} steps of {student['training']} (early stopping on held-out teacher "
        f"labels; best epoch -1 = the untrained initialisation was kept). Teacher: {t['name']}, LDS "
        f"{g['mean']:.3f} [{g['ci_low']:.3f}, {g['ci_high']:.3f}], fit {t['fit_seconds']:.0f} s + "
        f"{t['extra_models_seconds']:.0f} s for its 9 extra models, 500 test queries scored in "
        f"{t['inference_seconds']:.1f} s at load {t['loadavg'][0]} ({t.get('source', 'measured here')}).",
        "",
        "| teacher-labelled subsets | group LDS (95% CI) | LDS | held-out agreement with the teacher (init -> best) "
        "| best epoch / run | encoder training (s) | one-time (s) | inference 500 q (s) | speed-up vs teacher "
        "| load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["curve"]:
        gl = r["group_lds"]
        rows.append(
            f"| {r['n_subsets']} | {gl['mean']:.3f} [{gl['ci_low']:.3f}, {gl['ci_high']:.3f}] | {r['lds']['mean']:.3f} "
            f"| {r['heldout_lds_vs_teacher_labels_init']:.3f} -> {r['heldout_lds_vs_teacher_labels_best']:.3f} "
            f"| {r['best_epoch']} / {r['epochs_run']} | {r['train_seconds']:.0f} | {r['one_time_seconds']:.0f} "
            f"| {r['inference_seconds']:.3f} | {r['inference_speedup_vs_teacher']}x | {r['loadavg'][0]} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subsets", type=int, nargs="+", default=list(SUBSETS))
    parser.add_argument("--steps", type=int, default=STEPS, help="optimisation steps per student at most")
    parser.add_argument("--key", default="features_sjlt", help="key of the result in the JSON file")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a crowded machine)")
    parser.add_argument("--workspace", type=Path, default=WORKSPACE)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.subsets) < 2 or args.steps < 1:
        parser.error("--subsets must be >= 2 and --steps >= 1")
    run_benchmark(tuple(args.subsets), args.steps, args.key, args.workspace, args.out, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
