"""Run the dattri 0.3.0 attributors on the same model, checkpoints and data as ours (benchmark peer).

dattri is a benchmark/test extra (`requirements-bench.txt`); it is imported lazily inside `run_dattri`, so
importing this module never needs it.

Conventions found by reading dattri 0.3.0 and checked numerically against direct computations on digits
softmax regression (explicit IF, Grad-Dot and TracIn are re-checked by `tests/benchmarks/`):

* every attributor returns `[n_train, n_test]`; we transpose to `[n_test, n_train]`.
* signs: all eight methods already use our convention (positive = the training example helps the test
  example), so no sign flip is applied:

  - IF explicit / CG / LiSSA: `g_train^T (H + lambda I)^{-1} g_test`, `H` the Hessian of the MEAN training
    loss (mean cross-entropy over the single full-batch cache loader). This is `-d L_test / d eps` for
    up-weighting the training example by `eps`; not divided by `n_train` (leave-one-out change of the
    test loss is approximately `score / n_train`). CG runs exactly `max_iter` iterations (dattri ignores
    `tol`, see its TODO) starting from `x0 = v`. LiSSA's recursion
    `x <- v + (1 - damping) x - H x / scaling`, returned as `x / scaling`, converges to
    `(H + damping * scaling * I)^{-1} v`, so we pass `damping = lambda / scaling`.
  - IF EK-FAC: the same with `H` replaced by dattri's EK-FAC of the empirical Fisher (true labels, mean
    over samples) of the `nn.Linear` layers only (convolutions are not covered), `damping` added to the
    corrected eigenvalues.
  - TracIn: `sum_c w_c g_train(c) . g_test(c)` with `w_c` the learning rates; Grad-Dot is TracIn with the
    final checkpoint and weight 1; Grad-Cos additionally L2-normalises both gradients.
  - TRAK: `phi_test (Phi^T Phi + reg I)^{-1} Phi^T diag(1 - p_train)`, averaged over checkpoints as in the
    TRAK paper (kernels and `1 - p` averaged separately), with `phi` the randomly projected gradients of the
    margin `log(p / (1 - p))` (the README's recipe); gradients are pre-divided by `sqrt(n_params)`, which
    cancels when `reg = 0`.

Known dattri 0.3.0 defects, run as shipped (our/their comparisons should say so):

* EK-FAC rotates into the TRANSPOSED eigenbasis: `torch.linalg.eigh` returns eigenvectors as columns, but
  `_update_lambda` and `transform_test_rep` use `q_s @ G @ q_a.T` instead of `q_s.T @ G @ q_a`; and for
  layers with a bias the test gradient is laid out as `cat(W.flatten(), b).reshape(out, in + 1)` instead
  of `cat([W, b[:, None]], 1)`. Both were reproduced exactly (relative error 1e-7) from its cached factors;
  the Spearman correlation with a corrected EK-FAC on the same factors was 0.30 (damping 1e-3).
* CG ignores `tol` and always runs `max_iter` (10) iterations from `x0 = v`.
* The inverse-Hessian transforms are summed over the batches of the cache loader (hence one batch here) and
  recomputed for every (train batch, test batch) pair; TracIn recomputes test gradients per train batch.
* `TracInAttributor`/`TRAKAttributor` update their module-level `DEFAULT_PROJECTOR_KWARGS` in place, so
  projector settings leak between instances (we always pass a complete dict); the CPU `BasicProjector`
  regenerates its Gaussian matrix in blocks of 100 columns on every call when `proj_dim > 100`.
* EK-FAC's statistics only handle 2-D layer inputs (for 3-D inputs `a_prev` is unbound or stale).
"""

from __future__ import annotations

import importlib.metadata
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

#: Our attributor names -> the dattri method names accepted by `run_dattri`.
PEER_METHODS: dict[str, str] = {
    "influence/exact": "if_explicit",
    "influence/cg": "if_cg",
    "influence/lissa": "if_lissa",
    "influence/ekfac": "if_ekfac",
    "tracin": "tracin",
    "grad_dot": "grad_dot",
    "grad_cos": "grad_cos",
    "trak": "trak",
}

#: The methods `run_dattri` accepts.
METHODS: tuple[str, ...] = tuple(PEER_METHODS.values())

#: The Hessian damping used for the influence-function family when the caller gives none: the value of
#: dattri's README example (`IFAttributorCG(task, max_iter=10, regularization=1e-2)`); its benchmark
#: scripts are not shipped in the wheel, and the constructors' own default (0.0) makes the explicit
#: solve singular for softmax regression.
DEFAULT_IF_DAMPING = 1e-2

#: dattri 0.3.0's LiSSA defaults (`IFAttributorLiSSA.__init__`).
LISSA_DEFAULTS: dict[str, Any] = {
    "batch_size": 1,
    "num_repeat": 1,
    "recursion_depth": 5000,
    "scaling": 50.0,
    "mode": "rev-rev",
}

#: dattri 0.3.0's CG defaults (`IFAttributorCG.__init__`).
CG_DEFAULTS: dict[str, Any] = {"max_iter": 10, "tol": 1e-7, "mode": "rev-rev"}

# Per-sample gradient matrices dattri builds for one loader batch are kept under this many bytes.
_GRAD_BUDGET_BYTES = 512 * 2**20


@dataclass
class PeerResult:
    """Scores of one dattri method, converted to our convention, with its cost.

    Attributes:
        scores: `[n_test, n_train]` float32; positive = the training example helps the test example (lowers
            its loss when up-weighted).
        seconds: wall time of construction + `cache` + `attribute` (data loaders and model built before).
        peak_rss_mb: peak resident-set-size increase over the run, in MiB (psutil sampled every 20 ms).
        method: the dattri method name (a value of `PEER_METHODS`).
        settings: every setting passed to dattri plus the conventions applied (JSON-able).
    """

    scores: np.ndarray
    seconds: float
    peak_rss_mb: float
    method: str
    settings: dict = field(default_factory=dict)


class PeakRSS:
    """Context manager sampling this process's RSS in a background thread; `peak_mb` = peak increase."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline = 0
        self.peak = 0

    def _sample(self) -> None:
        rss = self._proc.memory_info().rss
        if rss > self.peak:
            self.peak = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakRSS:
        self.baseline = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        """Peak RSS increase over the baseline at entry, in MiB."""
        return max(self.peak - self.baseline, 0) / 2**20


def _batch_for(n: int, n_params: int, batch_size: int) -> int:
    """The largest batch (at least `batch_size`, at most `n`) whose per-sample gradients fit the budget."""
    return max(1, min(n, max(batch_size, _GRAD_BUDGET_BYTES // max(4 * n_params, 1))))


def _loader(x: Tensor, y: Tensor, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def _make_funcs(model: nn.Module, sample_ndim: int) -> tuple[Callable, Callable, Callable]:
    """dattri loss (mean cross-entropy), TRAK margin and TRAK correct-probability functions for `model`.

    dattri calls them with a batch `[B, ...]` (Hessian / Fisher estimation), a single-example batch `[1, ...]`
    (`BaseInnerProductAttributor`) or an unbatched example `[...]` (TracIn, TRAK), and LiSSA casts the labels
    to float; all three cases are normalised here.
    """

    def _batch(data: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = data
        if x.dim() == sample_ndim:
            x, y = x.unsqueeze(0), y.reshape(1)
        return x, y.long()

    def loss_func(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = _batch(data)
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    def margin_func(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = _batch(data)
        logp = -F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)
        return logp - torch.log(1 - torch.exp(logp))

    def correct_probability_func(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = _batch(data)
        return torch.exp(-F.cross_entropy(torch.func.functional_call(model, params, (x,)), y))

    return loss_func, margin_func, correct_probability_func


def _detached(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def run_dattri(
    method: str,
    model_factory: Callable[[], nn.Module],
    checkpoints: list[dict[str, Tensor]],
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    proj_dim: int = 2048,
    damping: float | None = None,
    lrs: list[float] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    project_grads: bool = False,
    trak_regularization: float = 0.0,
    method_kwargs: dict[str, Any] | None = None,
) -> PeerResult:
    """Score `test` against `train` with one dattri 0.3.0 attributor, the way dattri's README/API intends.

    Args:
        method: one of `METHODS` ("if_explicit", "if_cg", "if_lissa", "if_ekfac", "tracin", "grad_dot",
            "grad_cos", "trak").
        model_factory: builds a fresh model (`[B, ...] -> logits [B, C]`); checkpoints are loaded into it.
        checkpoints: state dicts. The influence functions, Grad-Dot and Grad-Cos use the last one; TracIn
            uses all (trajectory checkpoints, weighted by `lrs`); TRAK uses all (independently trained
            models).
        train_x: training inputs `[n_train, ...]` (float).
        train_y: training labels `[n_train]` (int).
        test_x: test inputs `[n_test, ...]`.
        test_y: test labels `[n_test]`.
        proj_dim: random-projection dimension for TRAK (and for TracIn/Grad-Dot/Grad-Cos if `project_grads`).
        damping: `lambda` in `(H + lambda I)^{-1}` for the influence family (None: `DEFAULT_IF_DAMPING`).
            Passed as `regularization` (explicit, CG), `damping` (EK-FAC) and `lambda / scaling` (LiSSA, whose
            `damping` is multiplied by `scaling`).
        lrs: TracIn weights, one per checkpoint (None: all ones).
        batch_size: the minimum loader batch; loaders are made as large as a 512 MiB per-sample-gradient
            budget allows, because dattri recomputes the test-side work (inverse-Hessian transforms for the
            IF family, test gradients for TracIn) once per training batch.
        seed: seeds torch (LiSSA sampling) and the projector.
        project_grads: project TracIn/Grad-Dot/Grad-Cos gradients to `proj_dim` (dattri's TracIn always calls
            its projector; False selects its "identity" projection, i.e. exact gradients like ours).
        trak_regularization: `regularization` of `TRAKAttributor` (dattri default 0.0).
        method_kwargs: extra/overriding keyword arguments for the dattri constructor (e.g. a shorter LiSSA
            `recursion_depth` in tests); recorded in `settings`.

    Returns:
        The scores `[n_test, n_train]` in our convention with time, peak RSS increase and settings.

    Raises:
        ValueError: for an unknown method, no checkpoints, or `lrs` of the wrong length.
    """
    if method not in METHODS:
        raise ValueError(f"unknown dattri method {method!r}; choose one of {', '.join(METHODS)}.")
    if not checkpoints:
        raise ValueError("run_dattri needs at least one checkpoint.")

    from dattri.algorithm import (
        IFAttributorCG,
        IFAttributorEKFAC,
        IFAttributorExplicit,
        IFAttributorLiSSA,
        TracInAttributor,
        TRAKAttributor,
    )
    from dattri.task import AttributionTask

    torch.manual_seed(seed)
    train_x, test_x = train_x.float().contiguous(), test_x.float().contiguous()
    train_y, test_y = train_y.long().contiguous(), test_y.long().contiguous()
    n_train, n_test = len(train_x), len(test_x)
    model = model_factory()
    model.eval()
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    loss_func, margin_func, correct_probability_func = _make_funcs(model, train_x.dim() - 1)
    lam = DEFAULT_IF_DAMPING if damping is None else float(damping)
    extra = dict(method_kwargs or {})

    settings: dict[str, Any] = {
        "library": "dattri",
        "dattri_version": importlib.metadata.version("dattri"),
        "method": method,
        "device": "cpu",
        "n_train": n_train,
        "n_test": n_test,
        "n_params": n_params,
        "seed": seed,
        "sign_flip": False,
        "score_layout": "transposed dattri [n_train, n_test] -> [n_test, n_train]",
        "loss": "mean cross-entropy",
    }

    big_train = _batch_for(n_train, n_params, batch_size)
    big_test = _batch_for(n_test, n_params, batch_size)
    last = [_detached(checkpoints[-1])]

    def projector(project: bool) -> dict[str, Any]:
        return {
            "proj_dim": int(proj_dim),
            "proj_max_batch_size": 32,
            "proj_seed": int(seed),
            "device": "cpu",
            "proj_type": "normal" if project else "identity",
        }

    build: Callable[[], Any]
    cache_loader: DataLoader | None = None
    if method in ("if_explicit", "if_cg", "if_lissa", "if_ekfac"):
        train_loader = _loader(train_x, train_y, big_train)
        task = AttributionTask(loss_func=loss_func, model=model, checkpoints=last)
        if method == "if_ekfac":
            cache_bs, test_bs, cls = batch_size, big_test, IFAttributorEKFAC
            kwargs = {"damping": lam, **extra}
            modules = kwargs.get("module_name") or [
                n for n, m in model.named_modules() if isinstance(m, nn.Linear)
            ]
            settings.update(
                module_name=list(modules) if isinstance(modules, list) else [modules],
                fisher="empirical (true labels), mean over samples",
            )
            scale = "g_train^T (EKFAC(F_emp) + damping I)^{-1} g_test over nn.Linear params, not divided by n"
        else:
            # The IHVP is summed over the batches of the cache loader, so it must be ONE batch (the full-data
            # Hessian of the mean loss); dattri's README caches a single-batch loader too.
            cache_bs = n_train
            # The transform is recomputed per test batch, so use few; but CG vmaps one chain of full-training-
            # set HVPs per test row (memory ~ rows x n_train x activations): keep its test batch at
            # `batch_size`. LiSSA's chains use one sampled example per step, so all test rows share one batch.
            test_bs = min(n_test, batch_size) if method == "if_cg" else big_test
            if method == "if_explicit":
                kwargs = {"regularization": lam, **extra}
                cls = IFAttributorExplicit
            elif method == "if_cg":
                kwargs = {**CG_DEFAULTS, "regularization": lam, **extra}
                cls = IFAttributorCG
            else:
                kwargs = {**LISSA_DEFAULTS, **extra}
                kwargs.setdefault("damping", lam / kwargs["scaling"])
                settings["lissa_effective_damping"] = kwargs["damping"] * kwargs["scaling"]
                cls = IFAttributorLiSSA
            scale = "g_train^T (H_mean + damping I)^{-1} g_test, not divided by n_train"
        cache_loader = _loader(train_x, train_y, cache_bs)
        test_loader = _loader(test_x, test_y, test_bs)
        settings.update(
            dattri_class=cls.__name__,
            kwargs=kwargs,
            damping=lam,
            checkpoints_used=1,
            cache_batch_size=cache_bs,
            train_batch_size=big_train,
            test_batch_size=test_bs,
            scale=scale,
        )

        def build() -> Any:
            attributor = cls(task=task, device="cpu", **kwargs)
            attributor.cache(cache_loader)
            with torch.no_grad():
                return attributor.attribute(train_loader, test_loader)

    elif method in ("tracin", "grad_dot", "grad_cos"):
        if method == "tracin":
            ckpts = [_detached(c) for c in checkpoints]
            weights = [1.0] * len(ckpts) if lrs is None else [float(w) for w in lrs]
            if len(weights) != len(ckpts):
                raise ValueError(f"got {len(weights)} learning rates for {len(ckpts)} checkpoints.")
        else:
            ckpts, weights = last, [1.0]
        train_loader = _loader(train_x, train_y, big_train)
        test_loader = _loader(test_x, test_y, big_test)
        task = AttributionTask(loss_func=loss_func, model=model, checkpoints=ckpts)
        kwargs = {
            "weight_list": torch.tensor(weights),
            "normalized_grad": method == "grad_cos",
            "projector_kwargs": projector(project_grads),
            **extra,
        }
        settings.update(
            dattri_class="TracInAttributor",
            kwargs={**kwargs, "weight_list": weights},
            lrs=None if lrs is None or method != "tracin" else weights,
            checkpoints_used=len(ckpts),
            train_batch_size=big_train,
            test_batch_size=big_test,
            scale={
                "tracin": "sum_c lr_c g_train(c) . g_test(c)",
                "grad_dot": "g_train . g_test",
                "grad_cos": "cos(g_train, g_test)",
            }[method],
        )

        def build() -> Any:
            attributor = TracInAttributor(task=task, device="cpu", **kwargs)
            with torch.no_grad():
                return attributor.attribute(train_loader, test_loader)

    else:  # trak
        ckpts = [_detached(c) for c in checkpoints]
        train_loader = _loader(train_x, train_y, big_train)
        test_loader = _loader(test_x, test_y, big_test)
        task = AttributionTask(loss_func=margin_func, model=model, checkpoints=ckpts)
        kwargs = {"projector_kwargs": projector(True), "regularization": float(trak_regularization), **extra}
        settings.update(
            dattri_class="TRAKAttributor",
            kwargs=kwargs,
            output_function="margin log(p / (1 - p)) (dattri README recipe)",
            checkpoints_used=len(ckpts),
            train_batch_size=big_train,
            test_batch_size=big_test,
            scale="phi_test (Phi^T Phi + reg I)^{-1} phi_train (1 - p_train), averaged over checkpoints",
        )
        if proj_dim > min(n_train, n_params) and trak_regularization == 0.0:
            settings["warning"] = (
                f"proj_dim={proj_dim} exceeds min(n_train, n_params)={min(n_train, n_params)}: the TRAK "
                "kernel is singular with regularization 0"
            )

        def build() -> Any:
            attributor = TRAKAttributor(
                task=task, correct_probability_func=correct_probability_func, device="cpu", **kwargs
            )
            attributor.cache(train_loader)
            with torch.no_grad():
                return attributor.attribute(test_loader)

    with PeakRSS() as rss:
        start = time.perf_counter()
        raw = build()
        seconds = time.perf_counter() - start
    scores = np.ascontiguousarray(raw.detach().cpu().to(torch.float32).numpy().T)
    if scores.shape != (n_test, n_train):
        raise RuntimeError(
            f"dattri {method} returned shape {tuple(raw.shape)}, expected ({n_train}, {n_test})."
        )
    return PeerResult(
        scores=scores, seconds=seconds, peak_rss_mb=rss.peak_mb, method=method, settings=settings
    )
