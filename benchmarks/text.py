"""Text benchmark: SST-2 on the MiniLM encoder with LoRA, through TRAK, influence, a LoRA ensemble and more.

    python -m benchmarks.text --quick   # 2 seeds, M = 24 LDS subsets, 100 queries
    python -m benchmarks.text --full    # 4 seeds, M = 48 LDS subsets, 300 queries

Setting: the built-in `sst2` at its defaults (2,000 training sentences of >= 8 words, 200 validation,
300 test from the GLUE dev file), the default text model (`TextConfig()`: MiniLM, masked mean pooling,
linear head; LoRA rank 8, alpha 16 on query/value of the top 2 of 6 layers; the bottom 4 layers' states
cached as an artifact) and `default_train_config("text")`. Every artifact (runs, frozen text states, LDS
shards) lives in `benchmarks/.workspace` and is reused on a rerun.

Rows:
- fine-tune: per seed the recorded training wall seconds and test accuracy (target >= 0.80);
- LDS ground truth: M random half subsets, one retraining seed each, query loss of the first n_query
  test sentences (`compute_lds_truth`), with its wall time;
- per method: LDS (mean, bootstrap 95% interval) and the wall / CPU seconds of fit + score. Gradients
  are over LoRA + head (`params="lora"`). TRAK on one model (regularized, and with TRAK's default
  lambda = 0 to show why not), influence functions with EK-FAC over the LoRA Linear layers
  (lora_A / lora_B; the frozen base Linear does not count), Grad-Dot, RepSim, and LoRA ensembles
  (Deng et al.) of TRAK and of influence over the run's seeds, which for the text model are LoRA
  fine-tunes of one shared frozen MiniLM (with the ensemble's cost report: storage = adapters + heads);
- mislabel detection: 10% of the training labels flipped (seeded), one model trained on them,
  ROC-AUC and recall in the top 10% of self-influence (influence, TRAK) and of the training-loss baseline.

The machine may be shared: `os.getloadavg()` is recorded next to every timing, with process CPU seconds
(less sensitive to other load than wall time). Writes `benchmarks/results/text.json` (one entry per mode)
and prints a Markdown table.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.console import log, machine_info, mode_parser, progress_line, store_result

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = ROOT / "benchmarks" / ".workspace"
RESULTS = ROOT / "benchmarks" / "results" / "text.json"

MODES = {
    "quick": {"seeds": 2, "n_subsets": 24, "n_query": 100},
    "full": {"seeds": 4, "n_subsets": 48, "n_query": 300},
}
NOISE = {"fraction": 0.1, "seed": 0}
#: TRAK's lambda. With proj_dim 2048 >= 2,000 training sentences, `Phi^T Phi` is singular and lambda = 0
#: (TRAK's default, a pseudo-inverse) gives LDS ~0 here; 30 is ~0.1 x the mean diagonal of `Phi^T Phi`
#: measured on these models (260-300), the same relative rule as influence's damping.
TRAK_REG = 30.0


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


class Timer:
    """Wall and CPU seconds of a block, with the 1-minute load average before and after.

    `cpu` is this process's CPU time; `workers_cpu` the CPU time of worker processes that ended inside
    the block (executor pools are shut down at the end of each `map`, so their CPU is counted).
    """

    def __enter__(self) -> Timer:
        self.load_before = os.getloadavg()[0]
        self._wall, self._cpu, self._children = time.perf_counter(), time.process_time(), _children_cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        self.workers_cpu = _children_cpu() - self._children
        self.load_after = os.getloadavg()[0]

    def to_dict(self) -> dict:
        return {
            "wall_seconds": round(self.wall, 2),
            "cpu_seconds": round(self.cpu, 2),
            "workers_cpu_seconds": round(self.workers_cpu, 2),
            "load_before": round(self.load_before, 2),
            "load_after": round(self.load_after, 2),
        }


def methods(n_seeds: int) -> list[tuple[str, str, dict]]:
    """(label, attributor name, settings) rows; gradients over LoRA + head.

    TRAK uses `damping=TRAK_REG` (see its comment). The LoRA ensemble rows wrap TRAK and influence
    with the ensemble attributor over the run's seeds: for the text model every seed *is* a LoRA
    fine-tune (adapters + head) of the one shared, frozen MiniLM, i.e. Deng et al.'s LoRA ensemble
    (`kind="independent"`; the ensemble refuses to add a second set of adapters to the text model).
    """
    from tda_explorer.attributors import ATTRIBUTORS

    trak = {"proj_dim": 2048, "damping": TRAK_REG, "params": "lora", "proj_type": "rademacher"}
    influence = {"solver": "ekfac", "params": "lora"}
    rows = [
        ("TRAK, 1 model", "trak", {**trak, "n_models": 1}),
        (
            "TRAK, 1 model, regularization 0 (plain TRAK)",
            "trak",
            {**trak, "damping": 0.0, "n_models": 1},
        ),
        ("influence (EK-FAC), 1 model", "influence", influence),
        ("Grad-Dot", "grad_dot", {"params": "lora"}),
        ("RepSim", "repsim", {}),
    ]
    if "ensemble" in ATTRIBUTORS:
        for label, base, settings in (("TRAK", "trak", trak), ("influence (EK-FAC)", "influence", influence)):
            rows.append(
                (
                    f"LoRA ensemble of {n_seeds}: {label}",
                    "ensemble",
                    {"base": base, "base_settings": settings, "kind": "independent", "n_models": n_seeds},
                )
            )
    else:
        rows.append((f"TRAK, {n_seeds} models", "trak", {**trak, "n_models": n_seeds}))
    return rows


def run_benchmark(mode: str, workers: int) -> dict:
    os.environ["TDA_WORKSPACE"] = str(WORKSPACE)  # the frozen-state cache of every process goes there too
    import torch

    from tda_explorer.attributors import make_attributor
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.evaluation import LDSConfig, compute_lds_truth, lds_score
    from tda_explorer.models import TextConfig, build_model, prepare_inputs
    from tda_explorer.store import Workspace
    from tda_explorer.training import LocalExecutor, default_train_config, train_run

    cfg = MODES[mode]
    ws = Workspace(WORKSPACE)
    executor = LocalExecutor(workers)
    started = time.perf_counter()
    log(f"text benchmark ({mode}), workers {workers}, torch threads {torch.get_num_threads()}")
    splits = load_dataset(DatasetSpec("sst2"))
    queries = splits.test.subset(range(cfg["n_query"]), name="sst2:queries")
    model_cfg, train_cfg = TextConfig(), default_train_config("text")

    with Timer() as t_states:  # the frozen bottom-layer states of every split (an artifact)
        probe = build_model(model_cfg, (), splits.train.n_classes)
        for es in (splits.train, splits.val, splits.test):
            prepare_inputs(probe, es.inputs)
    log(f"frozen states: {t_states.wall:.1f}s")

    with Timer() as t_run:
        run = train_run(
            splits, model_cfg, train_cfg, range(cfg["seeds"]), ws, executor, progress_line("seeds")
        )
    finetune = {
        str(s): {"seconds": round(m["seconds"], 1), "test_acc": m["test_acc"], "val_acc": m["val_acc"]}
        for s, m in run.metrics.items()
    }
    log(f"fine-tune: {finetune}")

    lds_cfg = LDSConfig(n_subsets=cfg["n_subsets"], alpha=0.5, seeds=(0,), shard_size=4)
    with Timer() as t_truth:
        truth = compute_lds_truth(
            splits.train, queries, model_cfg, train_cfg, lds_cfg, ws, executor, progress_line("LDS truth")
        )
    meta = ws.meta("lds_truth", truth.key)
    log(f"LDS truth: {t_truth.wall:.1f}s now, {meta['extra']['seconds']:.1f}s when computed")

    rows = []
    for label, name, settings in methods(cfg["seeds"]):
        attributor = make_attributor(name, progress=progress_line(label), **settings)
        with Timer() as t_fit:
            attributor.fit(run, splits.train)
        with Timer() as t_score:
            scores = attributor.score(queries)
        lds = lds_score(scores, truth)
        row = {
            "method": label,
            "attributor": name,
            "settings": attributor.config(),
            "lds": lds.to_dict(),
            "fit": t_fit.to_dict(),
            "score": t_score.to_dict(),
            "seconds": round(t_fit.wall + t_score.wall, 2),
        }
        if name == "ensemble":
            row["cost"] = attributor.cost_report()
        rows.append(row)
        log(f"{label}: LDS {lds.mean:.3f} [{lds.ci_low:.3f}, {lds.ci_high:.3f}] in {row['seconds']:.1f}s")

    mislabel = mislabel_rows(splits, model_cfg, train_cfg, ws, executor)
    return {
        "benchmark": "text",
        "mode": mode,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": {"spec": splits.spec, "n_train": len(splits.train), "n_query": len(queries)},
        "model": model_cfg.to_dict(),
        "training": train_cfg.to_dict(),
        "frozen_states": t_states.to_dict(),
        "finetune": {"seeds": finetune, "train_run": t_run.to_dict()},
        "lds_truth": {
            "n_subsets": lds_cfg.n_subsets,
            "alpha": lds_cfg.alpha,
            "seeds": list(lds_cfg.seeds),
            "key": truth.key,
            "seconds_when_computed": round(meta["extra"]["seconds"], 1),
            "created": meta.get("created"),
            "now": t_truth.to_dict(),
            "workers": workers,
        },
        "rows": rows,
        "mislabel": mislabel,
        "machine": machine_info(workers),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "notes": [
            "fine-tune seconds: wall time recorded when each seed was trained (single-threaded trainer); "
            "seeds reused from the workspace keep that time.",
            "LDS ground truth seconds_when_computed: wall time of its computation (shards reused from an "
            "interrupted run are not counted); retraining runs in `workers` processes.",
            "method seconds: fit (train-side features) + score of the n_query queries, wall, measured now; "
            "a LoRA ensemble's members are the run's seeds (their training time is in cost.train_seconds).",
            "the machine is shared: see load_before/after next to every timing.",
        ],
    }


def mislabel_rows(splits, model_cfg, train_cfg, ws, executor) -> dict:
    """Flip 10% of the training labels, train one model, rank by self-influence; AUC and recall@10%."""
    from tda_explorer.attributors import make_attributor
    from tda_explorer.data.noise import inject_label_noise
    from tda_explorer.evaluation import mislabel_metrics
    from tda_explorer.evaluation.mislabel import training_loss_scores
    from tda_explorer.training import train_run

    noisy = inject_label_noise(splits, NOISE["fraction"], NOISE["seed"])
    run = train_run(noisy, model_cfg, train_cfg, [0], ws, executor, progress_line("noisy run"))
    ids = noisy.train.ids
    out = {"noise": NOISE, "n_flipped": len(noisy.flipped_ids), "run_key": run.key, "rows": []}
    with Timer() as t:
        base = training_loss_scores(run, noisy.train)
    out["rows"].append(
        {"method": "training loss", **mislabel_metrics(base, noisy.flipped_ids, ids).to_dict(), **t.to_dict()}
    )
    for label, name, settings in (
        ("influence (EK-FAC) self-influence", "influence", {"solver": "ekfac", "params": "lora"}),
        ("TRAK self-influence", "trak", {"proj_dim": 2048, "damping": TRAK_REG, "params": "lora"}),
    ):
        with Timer() as t:
            scores = make_attributor(name, **settings).fit(run, noisy.train).self_influence()
        out["rows"].append(
            {"method": label, **mislabel_metrics(scores, noisy.flipped_ids, ids).to_dict(), **t.to_dict()}
        )
        log(f"mislabel {label}: AUC {out['rows'][-1]['auc']:.3f}")
    return out


def markdown(result: dict) -> str:
    """The benchmark as Markdown tables."""
    lines = [f"### Text benchmark ({result['mode']}): SST-2, MiniLM + LoRA (top 2 layers, cached states)", ""]
    ft = result["finetune"]["seeds"]
    lines += ["| seed | fine-tune s | test acc | val acc |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {s} | {m['seconds']:.0f} | {m['test_acc']:.3f} | {m['val_acc']:.3f} |" for s, m in ft.items()
    ]
    truth = result["lds_truth"]
    worker_cpu = truth["now"].get("workers_cpu_seconds", 0.0)
    cpu_note = (
        f" (worker CPU {worker_cpu:.0f} s = {worker_cpu / truth['n_subsets']:.0f} s per retraining)"
        if worker_cpu > 0
        else ""
    )
    lines += [
        "",
        f"LDS ground truth: {truth['n_subsets']} subsets of {truth['alpha']:.0%}, "
        f"{len(truth['seeds'])} seed, {result['dataset']['n_query']} queries, "
        f"{truth['seconds_when_computed']:.0f} s wall with {truth['workers']} workers"
        + (
            f" at load {truth['now']['load_before']:.1f}{cpu_note}."
            if truth["now"]["wall_seconds"] > 1
            else f" (computed at {truth.get('created', 'an earlier run')}; reused here, load then not recorded)."
        ),
        "",
        "| method | LDS | 95% CI | fit + score s | CPU s | load |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lds = r["lds"]
        cpu = r["fit"]["cpu_seconds"] + r["score"]["cpu_seconds"]
        lines.append(
            f"| {r['method']} | {lds['mean']:.3f} | [{lds['ci_low']:.3f}, {lds['ci_high']:.3f}] | "
            f"{r['seconds']:.0f} | {cpu:.0f} | {r['fit']['load_before']:.1f} |"
        )
    mis = result.get("mislabel")
    if mis is None:  # only the label-agreement block (`benchmarks.text_labels`) is stored for this mode
        return "\n".join(lines + label_lines(result))
    lines += [
        "",
        f"Mislabel detection ({mis['n_flipped']} of {result['dataset']['n_train']} labels flipped):",
        "",
        "| score | ROC-AUC | flips in top 10% | seconds |",
        "| --- | --- | --- | --- |",
    ]
    for r in mis["rows"]:
        lines.append(
            f"| {r['method']} | {r['auc']:.3f} | {r['recall_at']['0.1']:.1%} | {r['wall_seconds']:.0f} |"
        )
    return "\n".join(lines + label_lines(result))


def label_lines(result: dict) -> list[str]:
    """The label-agreement / diversity section (`benchmarks.text_labels`) when the mode has one."""
    if not result.get("labels"):
        return []
    from benchmarks.text_labels import markdown as labels_markdown

    return ["", "#### Do the top proponents share the query's label? (`python -m benchmarks.text_labels`)", "",
            labels_markdown(result["labels"])]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = mode_parser(__doc__.split("\n")[0], "processes for seeds and LDS retraining")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process (attributors)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    mode = args.mode or "quick"
    result = run_benchmark(mode, args.workers)
    store_result(RESULTS, mode, result, keep=("labels",))  # benchmarks.text_labels' block stays
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
