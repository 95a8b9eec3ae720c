"""Text proponents a person accepts: label agreement and diversity of every text method (issue 21 item 5).

    python -m benchmarks.text_labels --quick                       # SST-2 and the held-out set below
    python -m benchmarks.text_labels --quick --sets heldout        # one of them (results merged)

For each method (`methods()`), on the run's first seed and the first `n_query` test sentences:

- label agreement@10 (`benchmarks.text_agreement`): the share of a query's top-10 proponents whose label is
  the query's *predicted* class, with the scores measured at that class (the app's default measurement:
  misclassified queries are re-scored with their label set to the prediction), against the base rate of a
  random training example; and the same at the true label with true-label scores;
- diversity: distinct training examples among the top-3 proponents of all queries, the share of all
  top-3 slots taken by the 10 most frequent, and the Spearman correlation between how often an example is
  a top-3 proponent and its gradient norm (LoRA + head);
- LDS: from the text benchmark's stored rows of the same label (`benchmarks/results/text.json`, same run,
  same ground truth) when there is one: its 2,000-sentence ground truth costs 24 fine-tunes.

The held-out set (`heldout_splits`) is built from SST-2 sentences disjoint from the benchmark's: 800
training sentences of `train.tsv` that are not in its train / validation sample, imbalanced 3:1 positive
to negative (a random training example then shares a positive prediction 75% of the time, as on a skewed
spam / ham set), 100 validation sentences, and 150 `dev.tsv` sentences not among its test queries; it is
written as a CSV under the benchmark workspace and loaded as a user text table. One seed, no LDS.

Writes `text.json[mode]["labels"]` (`{"sst2": ..., "heldout": ...}`) and prints Markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.console import log
from benchmarks.text import MODES, RESULTS, TRAK_REG, WORKSPACE, Timer

#: The row of the app's default text attributor (`grad_cos` at its defaults: head gradients); its target is
#: agreement@10 above the base rate on both sets.
DEFAULT_TEXT_ROW = "Grad-Cos, head only"
HELDOUT = {"n_train": 800, "n_val": 100, "n_test": 150, "positive_share": 0.75, "seed": 21}
K_AGREE, K_DIVERSE = 10, 3


def methods() -> list[tuple[str, str, dict]]:
    """(label, attributor, settings): the defaults, the text benchmark's rows, and the diagnostics, cheapest
    and most telling first (results are saved after every row).

    Diagnostics isolate one cause each: the parameter subset (head only vs LoRA + head), normalisation
    (Grad-Cos, derived from Grad-Dot's scores and train gradient norms: the same per-query ranking) and
    TRAK's lambda (its default `c x trace / N` with the fallback c vs the benchmark's absolute 30).
    The default `ensemble` equals `trak` on a one-seed run, so it is not a row here.
    """
    trak = {"proj_dim": 2048, "damping": TRAK_REG, "params": "lora", "proj_type": "rademacher"}
    return [
        ("Grad-Dot", "grad_dot", {"params": "lora"}),
        ("TRAK (defaults)", "trak", {}),
        ("TRAK, head only", "trak", {"params": "head", "n_models": 1}),
        ("Grad-Cos, head only", "grad_cos", {"params": "head"}),
        ("RepSim", "repsim", {}),
        ("influence (EK-FAC), head only", "influence", {"solver": "ekfac", "params": "head"}),
        ("influence (EK-FAC), 1 model", "influence", {"solver": "ekfac", "params": "lora"}),
        ("TRAK, 1 model", "trak", {**trak, "n_models": 1}),
    ]


# ------------------------------------------------------------------------------------------- data
def heldout_csv(root: Path, bench_splits) -> Path:
    """Write the held-out SST-2 table (see module docstring) under `root`; returns its path (reused)."""
    import pandas as pd

    from tda_explorer.data.builtins import SST2_DEFAULT_PATH

    path = root / "heldout" / f"sst2-heldout-{HELDOUT['seed']}.csv"
    if path.is_file():
        return path
    read = dict(sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False, encoding="utf-8")
    train = pd.read_csv(SST2_DEFAULT_PATH / "train.tsv", **read)
    dev = pd.read_csv(SST2_DEFAULT_PATH / "dev.tsv", **read)
    used_train = {int(i.rsplit("-", 1)[1]) for i in bench_splits.train.ids + bench_splits.val.ids}
    used_dev = {int(i.rsplit("-", 1)[1]) for i in bench_splits.test.ids}
    rng = np.random.default_rng(HELDOUT["seed"])

    def pool(df, text_col, used):
        words = df[text_col].str.split().str.len()
        return np.array([r for r in np.flatnonzero(words >= 8) if r not in used])

    rows = pool(train, "sentence", used_train)
    labels = train["label"].astype(int).to_numpy()
    n_pos = round(HELDOUT["n_train"] * HELDOUT["positive_share"])
    pos = rng.choice(rows[labels[rows] == 1], n_pos + HELDOUT["n_val"] // 2, replace=False)
    neg = rng.choice(
        rows[labels[rows] == 0], HELDOUT["n_train"] - n_pos + HELDOUT["n_val"] // 2, replace=False
    )
    train_rows = np.concatenate([pos[:n_pos], neg[: HELDOUT["n_train"] - n_pos]])
    val_rows = np.concatenate([pos[n_pos:], neg[HELDOUT["n_train"] - n_pos :]])
    test_rows = rng.choice(pool(dev, "content", used_dev), HELDOUT["n_test"], replace=False)
    names = ("negative", "positive")
    table = [
        *({"id": f"sst2-train-{r}", "text": train["sentence"][r], "label": names[labels[r]], "split": "train"}
          for r in np.sort(train_rows)),
        *({"id": f"sst2-train-{r}", "text": train["sentence"][r], "label": names[labels[r]], "split": "val"}
          for r in np.sort(val_rows)),
        *({"id": f"sst2-dev-{r}", "text": dev["content"][r], "label": names[int(dev["label"][r])],
           "split": "test"} for r in np.sort(test_rows)),
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pd.DataFrame(table).to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def heldout_splits(bench_splits):
    """The held-out set as DatasetSplits (a user text table with the CSV's own split column)."""
    from tda_explorer.data import DatasetSpec, load_dataset

    path = heldout_csv(WORKSPACE, bench_splits)
    options = {"text_column": "text", "label_column": "label", "id_column": "id", "split_column": "split"}
    return load_dataset(DatasetSpec("text", path=str(path), options=options))


# ------------------------------------------------------------------------------------------- measuring
def predicted_scores(attributor, queries, scores, predicted: np.ndarray) -> np.ndarray:
    """Scores at the predicted class: misclassified queries re-scored with their label set to it."""
    import torch

    out = np.array(scores, dtype=np.float32, copy=True)
    wrong = np.flatnonzero(predicted != queries.labels.numpy())
    if len(wrong):
        relabelled = queries.subset(wrong).with_labels(torch.as_tensor(predicted[wrong]))
        out[wrong] = attributor.score(relabelled).numpy()
    return out


def _row(label, name, settings, scores, pred_scores, train_labels, predicted, true, norms, stored_lds, timer):
    from benchmarks.text_agreement import label_agreement, proponent_diversity

    agree_pred = label_agreement(pred_scores, train_labels, predicted, K_AGREE)
    agree_true = label_agreement(scores, train_labels, true, K_AGREE)
    row = {
        "method": label,
        "attributor": name,
        "settings": settings,
        "agreement_predicted": {k: v for k, v in agree_pred.items() if k != "per_query"},
        "agreement_true": {k: v for k, v in agree_true.items() if k != "per_query"},
        "diversity": proponent_diversity(pred_scores, K_DIVERSE, norms),
        "lds": stored_lds.get(label),
        **timer.to_dict(),
    }
    d = row["diversity"]
    log(
        f"{label}: agreement@{K_AGREE} {agree_pred['agreement']:.3f} (base {agree_pred['base_rate']:.3f}), "
        f"true-label {agree_true['agreement']:.3f}; top-{K_DIVERSE} distinct {d['distinct']}/{d['possible']}, "
        f"norm rho {d['norm_spearman']}; {timer.wall:.0f}s"
    )
    return row


def measure(run, splits, n_query: int, stored_lds: dict[str, dict], save=None) -> dict:
    """Agreement, diversity (and stored LDS) of every method on `run`'s first seed; `save(result)` after
    every row (a partial result survives an interrupted run)."""
    from tda_explorer.attributors import make_attributor

    queries = splits.test.subset(range(min(n_query, len(splits.test))), name="labels:queries")
    predicted = run.predict(queries).numpy().argmax(1)
    true = queries.labels.numpy()
    train_labels = splits.train.labels.numpy()
    out = {
        "dataset": splits.spec,
        "run": run.key,
        "seed": run.seeds[0],
        "test_acc": float((predicted == true).mean()),
        "n_train": len(splits.train),
        "n_query": len(queries),
        "misclassified": int((predicted != true).sum()),
        "rows": [],
    }
    norms = None
    for label, name, settings in methods():
        with Timer() as t:
            att = make_attributor(name, **settings).fit(run, splits.train)
            scores = att.score(queries).numpy()
            pred_scores = predicted_scores(att, queries, scores, predicted)
            if name == "grad_dot":  # ||g_t|| over LoRA + head: the norms of the diversity check
                norms = np.sqrt(np.clip(att.self_influence().numpy(), 0, None))
        args = (train_labels, predicted, true, norms, stored_lds)
        out["rows"].append(_row(label, name, att.config(), scores, pred_scores, *args, t))
        if name == "grad_dot":  # Grad-Cos ranks each query's row by g_q.g_t / ||g_t||
            with Timer() as t_cos:
                safe = np.where(norms > 0, norms, 1.0)
                cos, pred_cos = scores / safe, pred_scores / safe
            cfg = {"derived": "Grad-Dot scores / ||g_t|| (the Grad-Cos ranking)", "params": "lora"}
            out["rows"].append(_row("Grad-Cos", "grad_cos", cfg, cos, pred_cos, *args, t_cos))
        if save is not None:
            save(out)
    return out


def stored_lds_rows(mode: str) -> dict[str, dict]:
    """`{method label: {"mean", "ci_low", "ci_high", "created"}}` from the text benchmark's stored result."""
    if not RESULTS.is_file():
        return {}
    stored = json.loads(RESULTS.read_text()).get(mode, {})
    return {
        r["method"]: {
            **{k: r["lds"][k] for k in ("mean", "ci_low", "ci_high")},
            "created": stored.get("created"),
        }
        for r in stored.get("rows", [])
    }


def save_labels(mode: str, labels: dict) -> None:
    """Merge `labels` into `text.json[mode]["labels"]` (a set not rerun keeps its stored result); atomic."""
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    old = stored.setdefault(mode, {}).get("labels", {})
    stored[mode]["labels"] = {**old, **labels}
    tmp = RESULTS.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(stored, indent=2, default=str) + "\n")
    tmp.replace(RESULTS)


def run_labels(mode: str, sets: tuple[str, ...], workers: int) -> dict:
    os.environ["TDA_WORKSPACE"] = str(WORKSPACE)
    import torch

    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.models import TextConfig
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, default_train_config, train_run

    cfg = MODES[mode]
    ws, executor = Workspace(WORKSPACE), LocalExecutor(workers)
    model_cfg, train_cfg = TextConfig(), default_train_config("text")
    splits = load_dataset(DatasetSpec("sst2"))
    out = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "k_agree": K_AGREE,
        "k_diverse": K_DIVERSE,
        "torch_threads": torch.get_num_threads(),
    }
    started = time.perf_counter()

    def saver(key: str, extra: dict | None = None):
        def save(result: dict) -> None:
            out[key] = {**result, **(extra or {})}
            out["wall_seconds"] = round(time.perf_counter() - started, 1)
            out["loadavg_end"] = os.getloadavg()
            save_labels(mode, out)

        return save

    if "sst2" in sets:
        run = train_run(splits, model_cfg, train_cfg, [0], ws, executor)
        measure(run, splits, cfg["n_query"], stored_lds_rows(mode), saver("sst2"))
    if "heldout" in sets:
        held = heldout_splits(splits)
        run = train_run(held, model_cfg, train_cfg, [0], ws, executor)
        measure(run, held, HELDOUT["n_test"], {}, saver("heldout", {"recipe": HELDOUT}))
    return out


def _findings(rows: dict[str, dict]) -> list[str]:
    """One line per cause the rows can tell apart (each only when both of its rows were measured)."""

    def agree(label: str) -> str:
        return f"{rows[label]['agreement_predicted']['agreement']:.3f}"

    def distinct(label: str) -> str:
        return f"{rows[label]['diversity']['distinct']}"

    out = []
    if {"Grad-Dot", "Grad-Cos"} <= set(rows):
        out.append(
            f"normalisation: Grad-Dot agreement {agree('Grad-Dot')} with {distinct('Grad-Dot')} distinct top-3 "
            f"proponents, Grad-Cos (same gradients / ||g_t||) {agree('Grad-Cos')} with {distinct('Grad-Cos')}: "
            "dividing by the training gradient's norm spreads the proponents, the labels agree either way"
        )
    if {"TRAK (defaults)", "TRAK, head only"} <= set(rows):
        out.append(
            f"parameter subset: TRAK over LoRA + head {agree('TRAK (defaults)')}, over the head only "
            f"{agree('TRAK, head only')}"
        )
    if {"TRAK (defaults)", "Grad-Dot"} <= set(rows):
        rho = rows["TRAK (defaults)"]["diversity"]["norm_spearman"]
        out.append(
            f"TRAK's kernel inverse and (1 - p) weights vs the plain gradient product: {agree('TRAK (defaults)')} "
            f"vs {agree('Grad-Dot')}; TRAK's top-3 frequency follows the gradient norm (rho {rho:.2f})"
        )
    if "TRAK (defaults)" in rows:
        r = rows["TRAK (defaults)"]
        out.append(
            f"measurement: TRAK at the predicted class {r['agreement_predicted']['agreement']:.3f} vs the "
            f"predicted label; at the true label {r['agreement_true']['agreement']:.3f} vs the true label"
        )
    return ["", "Why: " + "; ".join(out) + "."] if out else []


def markdown(labels: dict) -> str:
    """Agreement / diversity tables (SST-2 and the held-out set)."""
    lines = []
    for key, title in (
        ("sst2", "SST-2 (the benchmark's run)"),
        ("heldout", "held-out SST-2 (3:1 imbalanced)"),
    ):
        res = labels.get(key)
        if not res:
            continue
        base = res["rows"][0]["agreement_predicted"]["base_rate"]
        lines += [
            "",
            f"{title}: seed {res['seed']}, {res['n_train']} training sentences, {res['n_query']} queries "
            f"(test accuracy {res['test_acc']:.3f}, {res['misclassified']} misclassified). Agreement@{labels['k_agree']} = "
            f"share of the top-{labels['k_agree']} proponents with the query's predicted label (scores at the "
            f"predicted class); a random training example: {base:.3f}. Diversity = distinct training examples "
            f"among all queries' top-{labels['k_diverse']}; top-10 share = slots taken by the 10 most frequent; "
            "rho = Spearman(frequency, gradient norm).",
            "",
            f"| method | agreement@{labels['k_agree']} (predicted) | lift | agreement (true label) | distinct "
            f"top-{labels['k_diverse']} | top-10 share | rho | LDS | s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in res["rows"]:
            a, t, d = r["agreement_predicted"], r["agreement_true"], r["diversity"]
            rho = "—" if d["norm_spearman"] is None else f"{d['norm_spearman']:.2f}"
            lds = "—" if not r.get("lds") else f"{r['lds']['mean']:.3f}"
            lines.append(
                f"| {r['method']} | {a['agreement']:.3f} | {a['lift']:+.3f} | {t['agreement']:.3f} | "
                f"{d['distinct']} / {d['possible']} | {d['top_share']:.2f} | {rho} | {lds} | {r['wall_seconds']:.0f} |"
            )
        lines += _findings({r["method"]: r for r in res["rows"]})
        default = next((r for r in res["rows"] if r["method"] == DEFAULT_TEXT_ROW), None)
        if default is not None:
            a = default["agreement_predicted"]
            verdict = "met" if a["agreement"] > a["base_rate"] else "MISSED"
            lines += ["", f"Target (the app's default text attributor, `grad_cos` = the {DEFAULT_TEXT_ROW!r} row, "
                      f"agrees more often than a random training example): {a['agreement']:.3f} vs "
                      f"{a['base_rate']:.3f}, {verdict}."]  # fmt: skip
    if lines:
        created = {r['lds']['created'] for res in labels.values() if isinstance(res, dict) and "rows" in res
                   for r in res["rows"] if r.get("lds")}  # fmt: skip
        if created:
            lines += [
                "",
                f"LDS: the text benchmark's stored rows of the same label (created {', '.join(sorted(created))}).",
            ]
        lines += ["", f"Measured {labels['created']}, {labels['torch_threads']} torch thread(s), load at end "
                  f"{labels['loadavg_end'][0]:.1f}."]  # fmt: skip
    return "\n".join(lines).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", const="quick", dest="mode")
    group.add_argument("--full", action="store_const", const="full", dest="mode")
    parser.add_argument("--sets", default="sst2,heldout", help="comma list of sst2, heldout")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    mode = args.mode or "quick"
    labels = run_labels(mode, tuple(args.sets.split(",")), args.workers)  # saved after every row
    from benchmarks.report import write_report

    write_report(RESULTS.parent, RESULTS.parent.parent / "RESULTS.md")
    print(markdown(labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
