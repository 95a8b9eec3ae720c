"""Checks behind the unrolled benchmark (`python -m benchmarks.unrolled --linearity` / `--dtda`).

`linearity`: how far the first-order prediction of the exact derivative reaches on the MNIST MLP;
`dtda_validation`: d-TDA with the unrolled base against retraining. Results are merged into
`benchmarks/results/unrolled.json` by `benchmarks.unrolled.main`.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from benchmarks.console import log, progress_line
from benchmarks.unrolled import WORKSPACE, restrict


def linearity(n_query: int = 32, n_subsets: int = 20, alpha: float = 0.95) -> dict:
    """How far the first-order prediction reaches on the MNIST MLP (default recipe, seed 0).

    1. float64 replay: for training examples 0-2 and the first 8 test queries, the loss change after
       fixed-seed retraining with `w_i = 1 - eps` (eps = 1e-4, 1e-2, 1 = removal) against `-eps dm/dw_i`:
       relative error `|actual - predicted| / |actual|` and correlation over the queries.
    2. LDS (fixed- and fresh-seed) of the float32 unrolled scores of the first `n_query` test queries when
       only 5% of the data is removed (`alpha`, M = `n_subsets`), next to alpha = 0.5 on the same subsets count.
    """
    import torch.nn.functional as F

    from tda_explorer.attributors import make_attributor
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.evaluation import LDSConfig, compute_lds_truth, lds_score
    from tda_explorer.models import MLPConfig
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, default_train_config, train_run
    from tda_explorer.training.weighted import train_weighted

    torch.set_num_threads(1)
    ws, executor = Workspace(WORKSPACE), LocalExecutor(1)
    splits = load_dataset(DatasetSpec(name="mnist5k"))
    model_cfg, train_cfg = MLPConfig(), default_train_config("mlp")
    run = train_run(splits, model_cfg, train_cfg, (0,), ws, executor)
    out: dict = {"perturbations": [], "lds": {}}
    q = splits.test.subset(range(8))
    before = os.environ.get("TDA_DTYPE")
    os.environ["TDA_DTYPE"] = "float64"
    try:
        attr = make_attributor("unrolled").fit(run, splits.train)
        dm = attr.weight_gradients(attr.members_[0], q).numpy()
    finally:
        if before is None:
            os.environ.pop("TDA_DTYPE")
        else:
            os.environ["TDA_DTYPE"] = before

    def losses(w):
        _, lg = train_weighted(model_cfg, train_cfg, splits.train, 0, w, torch.float64, {"q": q})
        return F.cross_entropy(lg["q"], q.labels, reduction="none").numpy()

    n = len(splits.train)
    base = losses(np.ones(n))
    for i in (0, 1, 2):
        for eps in (1e-4, 1e-2, 1.0):
            w = np.ones(n)
            w[i] = 1 - eps
            actual, predicted = losses(w) - base, -eps * dm[:, i]
            out["perturbations"].append(
                {
                    "example": i,
                    "eps": eps,
                    "rel_error": float(np.linalg.norm(actual - predicted) / np.linalg.norm(actual)),
                    "corr": float(np.corrcoef(actual, predicted)[0, 1]),
                }
            )
            log(f"linearity: example {i}, eps {eps}: {out['perturbations'][-1]}")
    scores = make_attributor("unrolled").fit(run, splits.train).score(splits.test.subset(range(n_query)))
    for a in (0.5, alpha):
        for mode in ("fixed", "fresh"):
            cfg = LDSConfig(n_subsets=n_subsets, alpha=a, seeds=(0,), subset_seed=0, shard_size=10, mode=mode)
            truth = restrict(
                compute_lds_truth(splits.train, splits.test, model_cfg, train_cfg, cfg, ws, executor), n_query
            )
            out["lds"][f"alpha={a} {mode}"] = lds_score(scores, truth).to_dict()
    out["setting"] = {"n_query": n_query, "n_subsets": n_subsets}
    return out


def dtda_validation(n_pairs: int = 6, workers: int = 1, n_query: int = 25) -> dict:
    """d-TDA with the unrolled base vs influence, on the converged scenario of `benchmarks.source_dtda --quick`
    (1,000 train images, MLP [64], 4 seeds; the first `n_query` test queries (100 there): pairs = largest
    predicted mean shifts).

    Two truths for the same pairs: `validate_dtda`'s retraining (the seed's init, batches re-drawn without
    the example: what the suites' d-TDA rows use) and fixed-seed retraining (`train_weighted` with the
    example's weight 0: the counterfactual the unrolled base predicts). Pearson of predicted vs true mean
    shifts over the pairs. Not yet run to completion: `compute_dtda` also computes every seed's
    self-influence, which for the unrolled base costs N / n_query times its scoring (> 10 min here).
    """
    from benchmarks.source_dtda import HIDDEN, MODES, DtdaStep, mnist5k_cut, scenarios
    from tda_explorer.attributors.dtda import compute_dtda, measurement_values
    from tda_explorer.evaluation.dtda import validate_dtda
    from tda_explorer.models import MLPConfig
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, train_run
    from tda_explorer.training.weighted import train_weighted

    torch.set_num_threads(1)
    mode = MODES["quick"]
    ws, executor = Workspace(WORKSPACE), LocalExecutor(workers)
    splits = mnist5k_cut(mode["n_train"], n_query)
    n = len(splits.train)
    model_cfg, train_cfg = MLPConfig(hidden=HIDDEN), scenarios(mode, n)["converged"]
    run = train_run(
        splits, model_cfg, train_cfg, range(mode["dtda_seeds"]), ws, executor, progress_line("train")
    )
    out: dict = {"setting": f"source_dtda --quick, converged, {n_query} queries", "seeds": list(run.seeds)}
    t0 = time.perf_counter()
    for base in ("unrolled", "influence"):  # cached: validate_dtda below reuses them
        compute_dtda(
            run, splits, {"base": base, "measurement": "loss"}, workspace=ws, progress=progress_line(base)
        )
    step = DtdaStep(run, splits, ws, executor)
    val, _ = step(validate_dtda, "unrolled", n_pairs=n_pairs)
    out["unrolled"] = {**val.summary(), "seconds": round(time.perf_counter() - t0, 1)}  # with compute_dtda
    infl, _ = step(validate_dtda, "influence", pairs=val.pairs)
    out["influence_same_pairs"] = infl.summary()
    fixed = np.zeros_like(val.retrained)  # [P, S] query loss after fixed-seed retraining without the example
    queries = splits.test
    for p, (q, t) in enumerate(val.pairs):
        qi, ti = int(queries.index_of([q])[0]), int(splits.train.index_of([t])[0])
        for k, seed in enumerate(val.seeds):
            w = np.ones(n)
            w[ti] = 0.0
            _, logits = train_weighted(
                model_cfg, train_cfg, splits.train, seed, w, None, {"q": queries.subset([qi])}
            )
            fixed[p, k] = float(measurement_values(logits["q"], queries.labels[qi : qi + 1], "loss")[0])
    true_fixed = fixed.mean(1) - val.with_data.mean(1)
    for label, v in (("unrolled", val), ("influence_same_pairs", infl)):
        out[label]["pearson_fixed_seed_truth"] = float(np.corrcoef(v.predicted_shift, true_fixed)[0, 1])
    out["pairs"] = [
        {
            "pair": list(pq),
            "unrolled": float(a),
            "influence": float(b),
            "retrained": float(c),
            "fixed_seed": float(d),
        }
        for pq, a, b, c, d in zip(
            val.pairs, val.predicted_shift, infl.predicted_shift, val.true_shift, true_fixed, strict=True
        )
    ]
    return out
