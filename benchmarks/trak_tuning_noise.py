"""How much LDS TRAK's `damping="auto"` loses to the best fixed lambda, by size of its held-out signal and by
selection rule (issue 21: the choice behind `trak_tuning.TUNE_SUBSETS` / `TUNE_QUERIES`).

Per robustness protocol (`benchmarks.robustness`: digits, the same runs and LDS ground truth, which only
scores the choices here) a pool of `POOL` held-out retrainings (the tuning seed stream, so its first M are
what "auto" retrains with M subsets) x every validation example is computed once. Per (k, models), the
validation Spearman table at each factor of `trak_tuning.FACTORS` is recomputed on `B` random draws of M
subsets and Q queries from the pool (without replacement), a rule picks c, and the loss is
`max_c LDS(c) - LDS(chosen c)` on the test ground truth, with LDS(c) on a fine log grid (interpolated in
log c). "fixed" is the draw "auto" makes (the first M subsets, the first Q queries). Rules:

- `refine`: the argmax of the mean Spearman, moved to the parabola vertex through its grid neighbours
  (`trak_tuning.refine`; the shipped rule).
- `one_se`: the largest factor whose mean is within one standard error (paired over queries) of the best.
- `wide`: the vertex of a parabola fitted to the argmax and two grid points each side.
- `pearson`: `refine` on the mean Pearson correlation instead of Spearman.

Draws of 32 from a pool of 64 overlap, so the larger sizes' spread is under-stated; the pool size is recorded.
Writes `benchmarks/results/trak_tuning_noise.json`; `python -m benchmarks.trak_tuning_noise --quick|--full`.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from benchmarks.measure import mode_main, short_machine
from benchmarks.robustness import MODES as ROBUSTNESS_MODES
from benchmarks.robustness import PROTOCOLS, WORKSPACE, log, make_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "trak_tuning_noise.json"
MODES = {
    "quick": {"protocols": ("mlp-sgd", "logreg-lbfgs (import)"), "proj_dims": (512,), "models": (1, 5),
              "pool": 64, "draws": 60, "truth": "quick"},
    "full": {"protocols": PROTOCOLS, "proj_dims": (128, 512, 2048), "models": (1, 5), "pool": 64,
             "draws": 150, "truth": "full"},
}  # fmt: skip
#: (subsets M, validation queries Q, rule); 16 x 100 was the design before, 24 x 250 the one shipped.
DESIGNS = (
    (16, 100, "refine"),
    (16, 250, "refine"),
    (24, 250, "refine"),
    (32, 250, "refine"),
    (16, 250, "one_se"),
    (16, 250, "wide"),
    (16, 250, "pearson"),
    (24, 250, "one_se"),
)
#: The fine grid LDS(c) is read from (log-spaced), plus plain TRAK.
FINE = (0.0, *np.geomspace(0.01, 100, 49).tolist())


def _corr(pred: np.ndarray, target: np.ndarray, rank: bool) -> np.ndarray:
    """Row correlations over the last axis: pred `[..., n, M]`, target `[n, M]` -> `[..., n]`."""
    if rank:
        pred, target = rankdata(pred, axis=-1), rankdata(target, axis=-1)
    p = pred - pred.mean(-1, keepdims=True)
    t = target - target.mean(-1, keepdims=True)
    return (p * t).sum(-1) / np.sqrt((p**2).sum(-1) * (t**2).sum(-1))


def _vertex(x: np.ndarray, y: np.ndarray) -> float | None:
    a, b, _ = np.polyfit(x, y, 2)
    return None if a >= 0 else float(np.clip(-b / (2 * a), x[0], x[-1]))


def choose(rule: str, factors: np.ndarray, rho: np.ndarray) -> float:
    """The factor `rule` picks from per-query correlations `rho` `[F, n]` at `factors` (sorted, 0 first)."""
    from tda_explorer.attributors.trak_tuning import refine

    mean = np.nanmean(rho, axis=-1)
    if rule in ("refine", "pearson"):
        return refine(dict(zip(factors.tolist(), mean.tolist(), strict=True)))
    i = int(np.argmax(mean))
    if rule == "one_se":
        se = np.nanstd(rho - rho[i], axis=-1) / np.sqrt(rho.shape[1])
        return float(factors[max(j for j in range(len(factors)) if j >= i and mean[j] >= mean[i] - se[j])])
    first = int(np.argmax(factors > 0))  # "wide"
    lo, hi = max(i - 2, first), min(i + 2, len(factors) - 1)
    if i < first or hi - lo < 2:
        return float(factors[i])
    v = _vertex(np.log(factors[lo : hi + 1]), mean[lo : hi + 1])
    return float(factors[i]) if v is None else float(np.exp(v))


def lds_at(curve: np.ndarray, c: float) -> float:
    """LDS at factor c from `curve` on `FINE` (log-interpolated; c = 0 is plain TRAK)."""
    if c <= 0:
        return float(curve[0])
    return float(np.interp(np.log(c), np.log(np.asarray(FINE[1:])), curve[1:]))


def predictions(att, examples, masks: np.ndarray, factors) -> np.ndarray:
    """TRAK's subset predictions `[F, n, M]` at each factor (lambda = c x trace / N per model)."""
    from tda_explorer.attributors.trak_tuning import spectral_parts

    group = torch.from_numpy(masks).double() * att.q_.double().cpu()
    parts, scales = [], []
    for m in att.models_:
        phi = att._train_features(m).double().cpu()
        gram = phi.T @ phi if not m.dual else phi @ phi.T
        parts.append(spectral_parts(gram, m.dual, phi, att._features(m, examples).double().cpu(), group))
        scales.append(float(gram.diagonal().sum()) / len(phi))
    return np.stack([
        sum((a / (s2 + c * sc)) @ g.T for (s2, a, g), sc in zip(parts, scales, strict=True)).numpy()
        for c in factors
    ])  # fmt: skip


def row_result(vpred, vloss, curve, draws: int, seed: int) -> dict:
    """Per design: the fixed draw's choice and loss, and the loss over `draws` random draws."""
    from tda_explorer.attributors.trak_tuning import FACTORS

    factors = np.asarray(FACTORS)
    best = float(curve.max())
    rng = np.random.default_rng(seed)
    out = {}
    for m, q, rule in DESIGNS:
        q = min(q, vloss.shape[1])

        def pick(subsets, queries, m=m, rule=rule):
            rho = _corr(vpred[:, queries][:, :, subsets], -vloss[subsets][:, queries].T, rule != "pearson")
            c = choose(rule, factors, rho)
            return c, best - lds_at(curve, c)

        c0, loss0 = pick(np.arange(m), np.arange(q))
        sampled = np.array([
            pick(rng.choice(vloss.shape[0], m, replace=False), rng.choice(vloss.shape[1], q, replace=False))
            for _ in range(draws)
        ])  # fmt: skip
        losses = sampled[:, 1]
        out[f"{m}x{q} {rule}"] = {
            "fixed_factor": c0,
            "fixed_loss": loss0,
            "mean_loss": float(losses.mean()),
            "p_loss_over_0.015": float((losses > 0.015).mean()),
            "p_loss_over_0.02": float((losses > 0.02).mean()),
            "sd_log_factor": float(np.std(np.log(np.maximum(sampled[:, 0], 1e-3)))),
        }
    return out


def run_benchmark(mode: str) -> dict:
    from tda_explorer.attributors import make_attributor
    from tda_explorer.attributors.trak_tuning import FACTORS, heldout_losses, tune_masks
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.evaluation import LDSConfig, compute_lds_truth
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor

    cfg, started = MODES[mode], time.perf_counter()
    tcfg = ROBUSTNESS_MODES[cfg["truth"]]
    ws = Workspace(WORKSPACE)
    splits = load_dataset(DatasetSpec("digits"))
    queries = splits.test.subset(range(tcfg["n_query"]), name=f"digits:q{tcfg['n_query']}")
    lds_cfg = LDSConfig(n_subsets=tcfg["n_subsets"], alpha=0.5, seeds=(0,), shard_size=10)
    masks = tune_masks(len(splits.train), cfg["pool"])
    rows, pools = [], {}
    for p, name in enumerate(cfg["protocols"]):
        run = make_run(name, splits, ws)
        truth = compute_lds_truth(
            splits.train, queries, run.model_config, run.require_recipe("LDS"), lds_cfg, ws, LocalExecutor(1)
        )
        start = time.perf_counter()
        vloss = heldout_losses(run, splits.train, splits.val, masks, ws)  # [pool, n_val]
        pools[name] = {"seconds": round(time.perf_counter() - start, 1), "shape": list(vloss.shape)}
        for k in cfg["proj_dims"]:
            for n_models in cfg["models"]:
                att = make_attributor("trak", proj_dim=k, n_models=n_models, damping=0.0).fit(
                    run, splits.train
                )
                vpred = predictions(att, splits.val, masks, FACTORS)
                tpred = predictions(att, queries, truth.masks, FINE)
                curve = np.nanmean(_corr(tpred, -truth.losses.T, True), axis=-1)
                designs = row_result(vpred, vloss, curve, cfg["draws"], seed=1000 * p + 10 * k + n_models)
                best = int(np.argmax(curve))
                rows.append({"protocol": name, "proj_dim": k, "n_models": n_models, "best": float(curve[best]),
                             "best_factor": FINE[best], "designs": designs})  # fmt: skip
                shipped, before = designs["24x250 refine"], designs["16x100 refine"]
                log(f"{name} k={k} models={n_models}: best {curve[best]:.3f} @ {FINE[best]:.3g}; fixed loss "
                    f"16x100 {before['fixed_loss']:.3f} -> 24x250 {shipped['fixed_loss']:.3f}; mean "
                    f"{before['mean_loss']:.4f} -> {shipped['mean_loss']:.4f}")  # fmt: skip
    summary = {}
    for m, q, rule in DESIGNS:
        key = f"{m}x{q} {rule}"
        d = [r["designs"][key] for r in rows]
        summary[key] = {
            "mean_loss": float(np.mean([x["mean_loss"] for x in d])),
            "p_loss_over_0.015": float(np.mean([x["p_loss_over_0.015"] for x in d])),
            "p_loss_over_0.02": float(np.mean([x["p_loss_over_0.02"] for x in d])),
            "fixed_max_loss": float(max(x["fixed_loss"] for x in d)),
        }
    return {
        "benchmark": "trak_tuning_noise",
        "mode": mode,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "pool": {"subsets": cfg["pool"], "queries": len(splits.val), "per_protocol": pools},
        "draws": cfg["draws"],
        "truth": {"n_subsets": lds_cfg.n_subsets, "n_query": len(queries)},
        "rows": rows,
        "summary": summary,
        "machine": short_machine(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def markdown(result: dict) -> str:
    """The summary over rows per design, then the fixed draw's loss per row for the old and shipped sizes."""
    lines = [
        f"Loss of TRAK's auto choice against the best fixed lambda in hindsight, digits robustness protocols "
        f"({len(result['rows'])} rows of protocol x k x models; ground truth {result['truth']['n_subsets']} subsets x "
        f"{result['truth']['n_query']} test queries). Held-out pool: {result['pool']['subsets']} retrainings x "
        f"{result['pool']['queries']} validation examples; {result['draws']} random draws of M subsets and Q "
        "queries per row; fixed = the draw auto makes (the first M, the first Q).",
        "",
        "| M x Q, rule | mean loss | draws losing > 0.015 | draws losing > 0.02 | fixed draw: worst row |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, s in result["summary"].items():
        lines.append(
            f"| {key} | {s['mean_loss']:.4f} | {100 * s['p_loss_over_0.015']:.1f} % | "
            f"{100 * s['p_loss_over_0.02']:.1f} % | {s['fixed_max_loss']:.3f} |"
        )
    lines += [
        "",
        "| protocol | k | models | best (c) | fixed 16x100: c, loss | fixed 24x250: c, loss |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        a, b = r["designs"]["16x100 refine"], r["designs"]["24x250 refine"]
        lines.append(
            f"| {r['protocol']} | {r['proj_dim']} | {r['n_models']} | {r['best']:.3f} ({r['best_factor']:.3g}) | "
            f"{a['fixed_factor']:.2f}, {a['fixed_loss']:.3f} | {b['fixed_factor']:.2f}, {b['fixed_loss']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return mode_main(argv, __doc__.split("\n")[0], run_benchmark, markdown, RESULTS)


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
