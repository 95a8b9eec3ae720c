"""Pruning curves: which removal rule keeps the best training set (issue 21, item 4).

On mnist5k (4,000 train / 500 validation / 500 test) with logistic regression at the package's default
recipe, clean and with 10% of the training labels flipped (flip seed 0), and (full mode) the default
MLP with 10% flipped labels (grad_dot and influence only, no d-TDA), a run of `seeds` seeds is
trained; every rule below ranks the training examples, the lowest-ranked 5% / 10% / 20% are removed,
and the model is retrained on the kept set with each of the run's seeds (`evaluation.pruning_curves`:
every distinct kept set trained once per seed, one shared random-removal baseline). Test accuracy is
the mean over the seeds with a 95% t-interval.

Rules (usefulness from *validation*-set scores only; the test set is used for nothing but accuracy):
- attribution (grad_dot, TRAK, influence/EK-FAC): `rule_usefulness(attributor.score(val), rule, ...)`
  under the rules "class_balanced" (the mean validation helpfulness, ranked within each class), "harm"
  (only the negative part of the scores: the predicted damage to the validation examples an example
  hurts) and "harm_loss" (harm's rank averaged with the own-loss rank: attribution combined with the loss
  baseline) and "harm_mislabel" (harm's rank averaged with the combined mislabel score's,
  `label_quality.DEFAULT_RULE` on 3 x 5-fold out-of-fold probabilities), all class-balanced; the earlier
  "sum" and "normalised" rules lost on both settings in the previous measurement (git history of
  RESULTS.md) and are no longer retrained;
- iterative attribution (`evaluation.iterative_pruning`): the rule applied in rounds of 2.5% of the
  training set up to 20%, the run's recipe retrained on the kept set with the run's seeds and the
  attributor fitted and scored again before each round ("iterative_harm", "iterative_harm_mislabel");
- d-TDA (EK-FAC base, the run's seeds): mean influence summed over validation ("mean"), and the
  per-seed usefulness `U_s = sum_q helps_s(q, z)` as `mean_s U_s - std_s U_s` ("mean-minus-std",
  a lower bound that prefers examples useful on every seed), both class-balanced;
- own loss (EL2N-like: the highest final-model loss, mean over seeds, removed first);
- cleanlab: the highest `1 - self-confidence` on 5-fold out-of-fold probabilities removed first;
- the combined mislabel score alone (no attribution), the most suspicious removed first;
- random (one seeded permutation).

Writes `benchmarks/results/pruning.json` (`{mode: result}`); `python -m benchmarks.pruning --quick|--full`.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from benchmarks.console import t_interval
from benchmarks.measure import mode_main, short_machine
from benchmarks.pruning_report import (  # noqa: F401 (markdown: report.py renders this module's results)
    BASELINES,
    COMBINED_SUFFIXES,
    ITERATIVE,
    MISLABEL_ROW,
    NOT_ATTRIBUTION,
    RULES,
    markdown,
    rule_means,
    targets,
    winners,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pruning.json"
WORKSPACE = ROOT / "benchmarks" / ".workspace"
FRACTIONS = (0.0, 0.05, 0.1, 0.2)
MODES = {  # settings: (dataset, flipped fraction, model[, flip seed, default 0])
    "quick": {"settings": (("mnist5k", 0.1, "logreg"),), "seeds": 1},
    "full": {
        "settings": (
            ("mnist5k", 0.1, "logreg"),
            ("mnist5k", 0.0, "logreg"),
            ("mnist5k", 0.1, "logreg", 1),  # a replication on other flips (is a margin more than noise?)
            ("mnist5k", 0.1, "mlp"),
        ),
        "seeds": 3,
        "carry_settings": (
            "mlp",
        ),  # the MLP setting (its retraining takes the longest) is kept from the stored result
    },
}
#: The MLP setting leaves out TRAK (its validation-tuned damping retrains MLPs) and d-TDA, for time.
MLP_ATTRIBUTORS = ("grad_dot", "influence/ekfac")
ATTRIBUTORS = {
    "grad_dot": ("grad_dot", {}),
    "trak": ("trak", {}),
    "influence/ekfac": ("influence", {}),
}


def log(msg: str) -> None:
    print(f"[pruning {datetime.now(UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def _np(x) -> np.ndarray:
    return np.asarray(torch.as_tensor(x).double().cpu())


def usefulness_vectors(
    run,
    splits,
    attributors: dict = ATTRIBUTORS,
    dtda: bool = True,
    folds: int = 5,
    iterative: bool = True,
    workspace=None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """`{rule name: usefulness [n_train]}` (higher = kept longer) and the seconds each source took.

    Reads `splits.train` and `splits.val` only (never `splits.test`). `dtda=False` / `folds=0` /
    `iterative=False` leave out the d-TDA rules / the cleanlab baseline / the iterative rules; the
    out-of-fold probabilities and iterative usefulness are cached in `workspace` (default the benchmark's).
    """
    from tda_explorer.evaluation.iterative_pruning import (
        ROUND_FRACTION,
        compute_iterative_usefulness,
        fit_and_score,
    )
    from tda_explorer.evaluation.label_quality import (
        cleanlab_scores,
        combined_mislabel_score,
        out_of_fold_probs,
    )
    from tda_explorer.evaluation.mislabel import training_loss_scores
    from tda_explorer.evaluation.pruning import rule_usefulness
    from tda_explorer.evaluation.run_label_quality import cached_oof_probs
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor

    train, labels, ws = splits.train, splits.train.labels, workspace or Workspace(WORKSPACE)
    own_loss = _np(training_loss_scores(run, train))
    t = time.perf_counter()
    mislabel = combined_mislabel_score(
        run, train, cached_oof_probs(run, train, ws, executor=LocalExecutor(1))
    )
    seconds = {"mislabel score": round(time.perf_counter() - t, 1)}
    out = {}
    for label, (name, settings) in attributors.items():
        t = time.perf_counter()
        scores = fit_and_score(run, splits, name, settings, ws)
        seconds[label] = round(time.perf_counter() - t, 1)
        for rule in RULES:
            out[f"{label} · {rule}"] = rule_usefulness(
                scores, rule, labels, own_loss=own_loss, mislabel=mislabel
            )
        log(f"{label}: {seconds[label]}s")
        for rule in ITERATIVE.get(label, ()) if iterative else ():
            t = time.perf_counter()
            out[f"{label} · {rule}"] = compute_iterative_usefulness(
                run, splits, name, settings, rule, max(FRACTIONS), ROUND_FRACTION, mislabel, scores,
                workspace=ws, executor=LocalExecutor(1), progress=lambda d, n, m, tag=f"{label} · {rule}": log(f"{tag}: {m}"),
            )  # fmt: skip
            seconds[f"{label} · {rule}"] = round(time.perf_counter() - t, 1)
            log(f"{label} · {rule}: {seconds[f'{label} · {rule}']}s")
    out[MISLABEL_ROW] = -mislabel
    if dtda:
        out.update(_dtda_vectors(run, splits, seconds))
    out[BASELINES[0]] = -own_loss
    if folds:
        t = time.perf_counter()
        probs = out_of_fold_probs(run, train, folds, executor=LocalExecutor(1))
        out[BASELINES[1]] = -cleanlab_scores(probs, labels)
        seconds["cleanlab"] = round(time.perf_counter() - t, 1)
    return out, seconds


def _dtda_vectors(run, splits, seconds: dict) -> dict[str, np.ndarray]:
    from tda_explorer.attributors.dtda import compute_dtda
    from tda_explorer.evaluation.pruning import pruning_usefulness
    from tda_explorer.store import Workspace

    t = time.perf_counter()
    result = compute_dtda(run, splits, None, "val", Workspace(WORKSPACE))
    per_seed = (result.helps_sign * result.deltas.astype(np.float64)).sum(axis=1)  # [S, n_train]
    seconds["dtda"] = round(time.perf_counter() - t, 1)
    log(f"dtda: {seconds['dtda']}s")
    labels = splits.train.labels
    return {
        "d-TDA · mean": pruning_usefulness(per_seed.mean(0), "class_balanced", labels),
        "d-TDA · mean-minus-std": pruning_usefulness(
            per_seed.mean(0) - per_seed.std(0), "class_balanced", labels
        ),
    }


def setting_result(
    dataset: str,
    noise: float,
    n_seeds: int,
    arch: str = "logreg",
    previous: dict | None = None,
    flip_seed: int = 0,
) -> dict:
    """One setting's rows, cached as JSON in `WORKSPACE/pruning_settings/` (so settings can run in parallel).

    `previous`: the same setting from the stored result; on logistic regression its TRAK and d-TDA rows
    (the slowest fits, and neither has an iterative rule) are carried over, marked, when
    the freshly retrained random row reproduces the stored one exactly (same run, same retraining).
    `flip_seed` != 0: a replication on other flipped labels, without TRAK and d-TDA (not carried: other data)."""
    import json

    from tda_explorer.store.atomic import atomic_write_text

    model = "" if arch == "logreg" else f"-{arch}"
    flips = f"-flips{flip_seed}" if flip_seed else ""
    path = WORKSPACE / "pruning_settings" / f"{dataset}{model}-noise{noise}{flips}-s{n_seeds}-v2.json"
    if path.exists():
        return json.loads(path.read_text())
    result = _setting_result(dataset, noise, n_seeds, arch, previous, flip_seed)
    atomic_write_text(path, json.dumps(result, indent=1))
    return result


def _setting_result(
    dataset: str, noise: float, n_seeds: int, arch: str, previous: dict | None, flip_seed: int
) -> dict:
    from tda_explorer.data import DatasetSpec, inject_label_noise, load_dataset
    from tda_explorer.evaluation.pruning import pruning_curves
    from tda_explorer.models import LogRegConfig, MLPConfig
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, default_train_config, train_run

    splits = load_dataset(DatasetSpec(dataset))
    if noise:
        splits = inject_label_noise(splits, noise, flip_seed)
    cfg, model = default_train_config(arch), LogRegConfig() if arch == "logreg" else MLPConfig()
    seeds = tuple(range(n_seeds))
    run = train_run(splits, model, cfg, seeds, Workspace(WORKSPACE), LocalExecutor(1))
    if arch == "logreg" and (previous is not None or flip_seed):  # no TRAK / d-TDA fit (see setting_result)
        chosen = {k: v for k, v in ATTRIBUTORS.items() if k != "trak"}
        uses, seconds = usefulness_vectors(run, splits, chosen, dtda=False)
    elif arch == "logreg":
        uses, seconds = usefulness_vectors(run, splits)
    else:
        chosen = {k: ATTRIBUTORS[k] for k in MLP_ATTRIBUTORS}
        uses, seconds = usefulness_vectors(run, splits, chosen, dtda=False)
    t = time.perf_counter()
    curves = pruning_curves(
        uses, splits.train, splits.test, model, cfg, FRACTIONS, seeds, 0, LocalExecutor(1),
        lambda d, n, m: log(f"retraining {d}/{n}") if d % 20 == 0 or d == n else None,
    )  # fmt: skip
    retrain_s = round(time.perf_counter() - t, 1)
    flipped = set(splits.flipped_ids)
    rows = []
    any_curve = next(iter(curves.values()))
    rows.append(_row("random", any_curve.random_acc, any_curve, None))
    for name, c in curves.items():
        rows.append(_row(name, c.method_acc, c, flipped))
    carried = _carry_rows(previous, rows[0]) if arch == "logreg" and previous is not None else []
    rows += carried
    attribution = [r["rule"] for r in rows if r["rule"] not in NOT_ATTRIBUTION]
    pure = [k for k in attribution if not k.endswith(COMBINED_SUFFIXES)]
    return {
        "dataset": dataset,
        "model": arch,
        "noise": noise,
        "flip_seed": flip_seed,
        "seeds": list(seeds),
        "fractions": list(FRACTIONS),
        "n_removed": list(any_curve.n_removed),
        "rows": rows,
        "best_attribution_rule": _best_row(rows, pure),
        "best_combined_rule": _best_row(rows, attribution),
        "best_rule": _best_row(rows, [r["rule"] for r in rows if r["rule"] != "random"]),
        "carried_over_from": carried[0]["carried_over"] if carried else None,
        "seconds": {**seconds, "retraining": retrain_s},
    }


def _best_row(rows: list[dict], names: list[str]) -> str:
    """`evaluation.pruning.best_pruning_rule`'s criterion on stored rows: the name among `names` with the
    highest mean test accuracy over the removed fractions (k > 0; first on a tie), picked on the test curves."""
    means = {r["rule"]: float(np.mean([a[0] for a in r["acc"][1:]])) for r in rows if r["rule"] in names}
    return max(means, key=lambda k: means[k])


def _carry_rows(previous: dict, random_row: dict) -> list[dict]:
    """The stored TRAK and d-TDA rows, marked `carried_over`, if `random_row` equals the stored random row."""
    old = {r["rule"]: r for r in previous["rows"]}
    same = np.array_equal([a[0] for a in old["random"]["acc"]], [a[0] for a in random_row["acc"]])
    if not same:
        log("random row differs from the stored one: TRAK / d-TDA rows not carried over")
        return []
    rows = [r for k, r in old.items() if k.startswith(("trak ·", "d-TDA ·"))]
    return [r | {"carried_over": r.get("carried_over") or previous["created"]} for r in rows]  # when measured


def _row(name: str, acc: np.ndarray, curve, flipped: set | None) -> dict:
    row = {"rule": name, "acc": [list(t_interval(a)) for a in acc], "acc_seeds": np.asarray(acc).tolist()}
    if flipped and name != "random":  # share of the removed examples that were flipped
        row["flipped_share"] = [
            float(np.mean([i in flipped for i in curve.removal_order[:m]])) if m else None
            for m in curve.n_removed
        ]
    return row


def diagnose(dataset: str, noise: float, n_seeds: int) -> dict:
    """Why the summed rule lost to random (Grad-Dot, 2 s): the classes of its lowest 10% and how much of
    |usefulness| is the gradient norm (Spearman with self-influence), vs the class-balanced rule."""
    from scipy.stats import spearmanr

    from tda_explorer.attributors import make_attributor
    from tda_explorer.data import DatasetSpec, inject_label_noise, load_dataset
    from tda_explorer.evaluation.pruning import pruning_usefulness, usefulness_from_scores
    from tda_explorer.models import LogRegConfig
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, default_train_config, train_run

    splits = load_dataset(DatasetSpec(dataset))
    if noise:
        splits = inject_label_noise(splits, noise, 0)
    seeds = tuple(range(n_seeds))
    run = train_run(
        splits, LogRegConfig(), default_train_config("logreg"), seeds, Workspace(WORKSPACE), LocalExecutor(1)
    )
    attributor = make_attributor("grad_dot").fit(run, splits.train)
    useful = usefulness_from_scores(attributor.score(splits.val))
    si = _np(attributor.self_influence())
    labels = splits.train.labels.numpy()
    k = len(labels) // 10
    out = {"spearman_abs_usefulness_self_influence": float(spearmanr(np.abs(useful), si).statistic)}
    for rule in ("sum", "class_balanced"):
        low = np.argsort(pruning_usefulness(useful, rule, labels, si), kind="stable")[:k]
        out[f"{rule}_removed_per_class"] = np.bincount(labels[low], minlength=int(labels.max()) + 1).tolist()
    return out


def run_benchmark(mode: str) -> dict:
    import json

    cfg = MODES[mode]
    started = time.perf_counter()
    stored = json.loads(RESULTS.read_text()).get(mode) if RESULTS.exists() else None
    old = {(s["dataset"], s["noise"], s.get("model", "logreg"), s.get("flip_seed", 0)): s | {"created": stored["created"]}
           for s in (stored or {}).get("settings", [])}  # fmt: skip
    settings = []
    for d, noise, arch, *flip in cfg["settings"]:
        flip_seed = flip[0] if flip else 0
        previous = old.get((d, noise, arch, flip_seed))
        if arch in cfg.get("carry_settings", ()) and previous is not None:  # not re-run: the stored rows
            settings.append(
                previous | {"carried_over_from": previous.get("carried_over_from") or stored["created"]}
            )
            continue
        settings.append(
            setting_result(d, noise, cfg["seeds"], arch, previous if not flip_seed else None, flip_seed)
        )
    for s, (d, noise, arch, *flip) in zip(settings, cfg["settings"], strict=True):
        if arch == "logreg" and not flip:
            s["diagnosis_grad_dot"] = diagnose(d, noise, cfg["seeds"])
    head = {"benchmark": "pruning", "mode": mode, "created": datetime.now(UTC).isoformat(timespec="seconds")}
    wall = round(time.perf_counter() - started, 1)
    return head | {"settings": settings, "machine": short_machine(), "wall_seconds": wall}


def main(argv: list[str] | None = None) -> int:
    return mode_main(argv, __doc__.split("\n")[0], run_benchmark, markdown, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
