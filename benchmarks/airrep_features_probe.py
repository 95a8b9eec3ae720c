"""What limits AirRep on model features: a closed-form bilinear student vs label subsets and label queries.

    python -m benchmarks.airrep_features_probe

Same setting, teacher and features as `benchmarks.airrep_features` (the run's whitened last-layer gradient
features, `feature_dim` 1024; TRAK-10 sjlt's validation scores as the teacher). Instead of the ranking
loss, the student `s(x, z) = phi(x)^T W phi(z)` is fitted in closed form: ridge regression of the teacher's
group effects `e[q, j] = sum_{i in S_j} teacher[q, i]`, centred over the subsets, on
`phi(x_q)^T W (Phi_{S_j} - mean_j Phi_{S_j})` (the sum-pooled student is linear in W; solved with the
SVDs of both sides, relative ridge `RIDGE`). This is the best a linear student on these features can do
with those labels, so its LDS on the test queries (against real retraining, `lds_score`) shows whether
more teacher-labelled subsets (M) or more label queries (Q, the first Q validation queries) would help.
Reference rows: `W = I` (the whitened features' dot product, no learning) and the full 12,900-wide
features' dot product.

Results: `benchmarks/results/airrep.json` under the key "features_probe".
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.airrep import RESULTS, WORKSPACE, loadavg, save_result, setup, summary
from benchmarks.airrep_features import STUDENT, load_teacher
from benchmarks.console import log
from tda_explorer.attributors.airrep import AirRepDataConfig, training_subset_masks
from tda_explorer.attributors.airrep.model_features import feature_transform, model_features
from tda_explorer.attributors.airrep.teacher import teacher_effects
from tda_explorer.evaluation import lds_score

SUBSETS = (256, 1024, 4096, 16384)
QUERIES = (100, 250, 500)
RIDGE = 1e-4


def ridge_bilinear(fq: torch.Tensor, b: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    """`W [k, k]` minimising `||fq W b^T - y||^2 + lam ||W||^2`, `lam = ridge * (s1_max * s2_max)^2`.

    fq `[Q, k]` query features, b `[M, k]` centred subset feature sums, y `[Q, M]` centred effects."""
    u1, s1, v1 = torch.linalg.svd(fq, full_matrices=False)
    u2, s2, v2 = torch.linalg.svd(b, full_matrices=False)
    ss = s1[:, None] * s2[None, :]
    lam = ridge * float(ss.max()) ** 2
    return v1.T @ ((u1.T @ y @ u2) * ss / (ss**2 + lam)) @ v2


def markdown(results: dict) -> str:
    """References and the ridge-student grid as Markdown (rendered by `benchmarks.report`)."""
    t = results["teacher_lds"]
    rows = [
        f"Closed-form bilinear student on the same features (relative ridge {results['ridge']}), fitted to "
        f"{results['teacher']}'s group effects (teacher LDS {t['mean']:.3f}); LDS on the 500 test queries "
        "against real retraining. Load at the end: " + str(results["loadavg"]) + ".",
        "",
        "| student | label queries | teacher-labelled subsets | LDS (95% CI) |",
        "|---|---|---|---|",
    ]
    for name, r in results["references"].items():
        rows.append(f"| {name} | - | - | {r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] |")
    for r in results["curve"]:
        lds = r["lds"]
        rows.append(
            f"| ridge W | {r['n_label_queries']} | {r['n_subsets']} "
            f"| {lds['mean']:.3f} [{lds['ci_low']:.3f}, {lds['ci_high']:.3f}] |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    st = setup(WORKSPACE, 2)
    torch.set_num_threads(1)
    run, splits, truth = st.run, st.splits, st.truth
    teacher, info = load_teacher(st)
    models = [run.model(s) for s in run.seeds]
    t = feature_transform(models, splits.train, STUDENT["feature_dim"])
    ft, fq, fs = (model_features(models, x, t).double() for x in (splits.train, splits.val, splits.test))
    raw_train, raw_test = model_features(models, splits.train), model_features(models, splits.test)
    full = feature_transform(models, splits.train, 0)
    rows = {
        "whitened features, W = I (feature_dim 1024)": summary(lds_score((fs @ ft.T).float(), truth)),
        "whitened features, W = I (all 12,900)": summary(lds_score((raw_test @ full) @ (raw_train @ full).T, truth)),
    }  # fmt: skip
    for name, r in rows.items():
        log(f"{name}: LDS {r['mean']:.4f}")
    scores = teacher.score(splits.val).double().numpy()
    curve = []
    for m in SUBSETS:
        masks = training_subset_masks(len(splits.train), AirRepDataConfig(n_subsets=m))
        e = torch.from_numpy(teacher_effects(scores, masks))  # [Q, M]
        b = torch.from_numpy(masks).double() @ ft
        b = b - b.mean(0)
        for q in QUERIES:
            start = time.perf_counter()
            y = e[:q] - e[:q].mean(1, keepdim=True)
            w = ridge_bilinear(fq[:q], b, y, RIDGE)
            res = summary(lds_score((fs @ w @ ft.T).float(), truth))
            curve.append({"n_subsets": m, "n_label_queries": q, "lds": res, "seconds": round(time.perf_counter() - start, 2)})  # fmt: skip
            log(f"ridge student M={m} Q={q}: test LDS {res['mean']:.4f}")
    results = {
        "benchmark": "airrep_features_probe",
        "teacher": info["name"],
        "teacher_lds": info["group_lds"],
        "features": {k: STUDENT[k] for k in ("backbone", "feature_dim")},
        "ridge": RIDGE,
        "references": rows,
        "curve": curve,
        "loadavg": loadavg(),
    }
    results["markdown"] = markdown(results)
    save_result(args.out, "features_probe", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
