"""Run kronfluence 1.0.1's EK-FAC influence on the same model and data as ours (benchmark peer).

kronfluence is a benchmark/test extra (`requirements-bench.txt`, installed without its dependencies: its
wheel asks for any torchvision, and the resolver's pick is a CUDA build that breaks on our CPU torch);
it is imported lazily inside `run_kronfluence`, so importing this module never needs it.

How it is run (kronfluence's documented recipe, `Analyzer(cpu=True)`):

* `ClassificationTask`: the training loss is the summed cross-entropy; when kronfluence asks for a
  sampled loss (fitting the covariance factors) the labels are drawn from the model's own predictive
  distribution (the true Fisher, as in kronfluence's examples). The measurement is the query's
  cross-entropy loss, the quantity LDS ground truth is built from (kronfluence's examples use the margin).
* `prepare_model` wraps every `nn.Linear` / `nn.Conv2d`; factors by `fit_all_factors` with
  `FactorArguments()` (strategy "ekfac"), scores by `compute_pairwise_scores`.
* damping: `ScoreArguments().damping_factor`, whose literal default is 1e-8 (`"defaults"`), or `None`, its
  documented heuristic of 0.1 x the mean eigenvalue of each layer (`"heuristic"`), or a number.

Sign and scale: kronfluence's pairwise score is `g_query^T (EKFAC(F) + damping I)^{-1} g_train` with `F`
the Fisher of the mean loss; positive = up-weighting the training example lowers the query's loss, our
convention, so no sign flip (checked by `tests/benchmarks/test_kronfluence_runner.py`). Not divided by
`n_train` (ranking per query is what LDS reads).
"""

from __future__ import annotations

import importlib.metadata
import logging
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from benchmarks.peers.dattri_runner import PeakRSS, PeerResult

#: `damping` choices of `run_kronfluence` besides a number.
DAMPING_CHOICES = ("defaults", "heuristic")


def _task_class():
    from kronfluence.task import Task

    class ClassificationTask(Task):
        """Summed cross-entropy (sampled labels when fitting factors); measurement = the query's loss."""

        def compute_train_loss(self, batch, model: nn.Module, sample: bool = False) -> Tensor:
            x, y = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    y = torch.multinomial(F.softmax(logits.detach(), dim=-1), num_samples=1).flatten()
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model: nn.Module) -> Tensor:
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

    return ClassificationTask


def run_kronfluence(
    model_factory: Callable[[], nn.Module],
    state: dict[str, Tensor],
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    damping: str | float = "heuristic",
    factor_batch_size: int = 256,
    train_batch_size: int = 512,
    query_batch_size: int = 256,
    seed: int = 0,
) -> PeerResult:
    """Score `test` against `train` with kronfluence's EK-FAC on the CPU.

    Args:
        model_factory: builds a fresh model (`[B, ...] -> logits [B, C]`); `state` is loaded into it.
        state: the model's state dict (the final model of the run's first seed).
        train_x / train_y: training inputs `[n_train, ...]` (float) and labels `[n_train]` (int).
        test_x / test_y: query inputs `[n_test, ...]` and labels `[n_test]`.
        damping: "defaults" (kronfluence's literal `ScoreArguments` default, 1e-8), "heuristic"
            (`damping_factor=None`: 0.1 x each layer's mean eigenvalue) or an absolute float.
        factor_batch_size / train_batch_size / query_batch_size: `per_device_*batch_size` of the
            factor fit and of the pairwise scores (given, so kronfluence does not search for them).
        seed: seeds torch (the Fisher's sampled labels).

    Returns:
        Scores `[n_test, n_train]` in our convention with wall time (factors + scores), peak RSS
        increase and settings (including the split `factor_seconds` / `score_seconds`).

    Raises:
        ValueError: for an unknown damping choice or a negative damping.
    """
    if isinstance(damping, str) and damping not in DAMPING_CHOICES:
        raise ValueError(f"damping must be a float or one of {DAMPING_CHOICES}, got {damping!r}.")
    if not isinstance(damping, str) and float(damping) < 0:
        raise ValueError(f"damping must be >= 0, got {damping}.")
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    logging.getLogger("kronfluence").setLevel(logging.WARNING)
    torch.manual_seed(seed)
    model = model_factory()
    model.load_state_dict(state)
    model.eval()
    task = _task_class()()
    train = TensorDataset(train_x.float().contiguous(), train_y.long().contiguous())
    query = TensorDataset(test_x.float().contiguous(), test_y.long().contiguous())
    factor_args = FactorArguments()  # strategy "ekfac"
    if damping == "defaults":
        score_args = ScoreArguments()
    else:
        score_args = ScoreArguments(damping_factor=None if damping == "heuristic" else float(damping))
    settings: dict[str, Any] = {
        "library": "kronfluence",
        "kronfluence_version": importlib.metadata.version("kronfluence"),
        "strategy": factor_args.strategy,
        "damping": damping,
        "damping_factor": score_args.damping_factor,
        "fisher": "true Fisher (labels sampled from the model), summed loss",
        "measurement": "query cross-entropy loss",
        "batch_sizes": {"factors": factor_batch_size, "train": train_batch_size, "query": query_batch_size},
        "device": "cpu",
        "seed": seed,
        "sign_flip": False,
        "n_train": len(train),
        "n_test": len(query),
    }
    with tempfile.TemporaryDirectory(prefix="kronfluence-") as out, PeakRSS() as rss:
        start = time.perf_counter()
        model = prepare_model(model, task)
        analyzer = Analyzer("peer", model, task, cpu=True, disable_tqdm=True, output_dir=out)
        analyzer.fit_all_factors(
            "factors", train, per_device_batch_size=factor_batch_size, factor_args=factor_args
        )
        factor_seconds = time.perf_counter() - start
        analyzer.compute_pairwise_scores(
            "scores",
            "factors",
            query,
            train,
            per_device_query_batch_size=query_batch_size,
            per_device_train_batch_size=train_batch_size,
            score_args=score_args,
        )
        raw = analyzer.load_pairwise_scores("scores")["all_modules"]
        seconds = time.perf_counter() - start
    settings.update(factor_seconds=round(factor_seconds, 2), score_seconds=round(seconds - factor_seconds, 2))
    scores = np.ascontiguousarray(raw.detach().cpu().to(torch.float32).numpy())
    if scores.shape != (len(query), len(train)):
        raise RuntimeError(f"kronfluence returned {scores.shape}, expected ({len(query)}, {len(train)}).")
    return PeerResult(
        scores=scores,
        seconds=seconds,
        peak_rss_mb=rss.peak_mb,
        method=f"kronfluence/ekfac ({damping})",
        settings=settings,
    )
