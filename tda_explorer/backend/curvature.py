"""K-FAC and EK-FAC curvature for nn.Linear / nn.Conv2d layers (layer-block-diagonal, true Fisher).

For a layer with per-example gradient `G_i = sum_l ds_{i,l} a_{i,l}^T` `[d_out, d_in]` (see
`backend.layers`; bias as an extra input column of ones), the Fisher block `E_i[vec(G_i) vec(G_i)^T]`
(row-major vec) is approximated by `S ⊗ A` with

    A = sum_{i,l} a a^T / (n L)        (activation covariance, averaged over examples and positions)
    S = sum_{i,l} ds ds^T / n          (output-gradient covariance, per example; = L x per-position mean)

where `ds` is the gradient of the cross-entropy at labels *sampled* from the model's predictive
distribution (true Fisher = GGN in expectation for cross-entropy), drawn with a seeded generator.
`A = Q_A diag(l_A) Q_A^T`, `S = Q_S diag(l_S) Q_S^T` are eigendecomposed in float64. K-FAC uses the
eigenvalues `l_S[o] l_A[i]`; EK-FAC replaces them with the corrected `E_i[(Q_S^T G_i Q_A)[o, i]^2]`
(per-example, George et al. 2018). The curvature approximates the Hessian of the *mean* training loss.

Inverse: `(H + (wd + lambda) I)^{-1} g = Q_S [(Q_S^T G Q_A) / (eig + wd + lambda)] Q_A^T`, layer by layer,
with `wd` the weight-decay coefficient (the L2 term `wd/2 ||theta||^2` adds `wd I` exactly) and damping
`lambda` per layer: absolute if given, else `damping_factor x mean(eig)` of that layer.
`apply_spectral(g, fn)` applies any elementwise function of the shifted eigenvalues (Source's
`exp(-eta K H)` and `(1 - exp(-eta K H)) / H`); `fit_averaged` fits one curvature averaged over several
models (covariances averaged, one eigenbasis, corrected eigenvalues averaged in it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tda_explorer.backend.damping import absolute_damping, check_damping
from tda_explorer.backend.device import get_device, get_dtype
from tda_explorer.backend.grads import DEFAULT_MEMORY_BYTES, ParamSubset, forward_saved_bytes
from tda_explorer.backend.layers import LayerInfo, capture_layers, find_layers, flat_to_layer, layer_to_flat
from tda_explorer.errors import ConfigError, NotFittedError
from tda_explorer.models.tasks import batch_loss, sample_fisher_targets, task_of

Progress = Callable[[int, int, str], None]

SAVED_COPIES = 4
"""Memory of one example in a batched forward + backward ~ this many times what its forward saves for
backward (measured on the MiniLM text model: ~9 MB per 58-token sentence for 2.3 MB saved)."""


@dataclass
class LayerFactors:
    """Factors of a layer (float64): `Q_A [d_in, d_in]`, `Q_S [d_out, d_out]`, `eigenvalues [d_out, d_in]`."""

    q_a: torch.Tensor
    q_s: torch.Tensor
    eigenvalues: torch.Tensor
    damping: float = 0.0


class KroneckerCurvature:
    """K-FAC (`corrected=False`) or EK-FAC (`corrected=True`) curvature of the mean training loss.

    Args:
        model: the model at which the curvature is taken (moved to the device/dtype; eval mode).
        params: ParamSubset spec; every chosen parameter must belong to a supported layer.
        corrected: True for EK-FAC eigenvalue correction, False for plain K-FAC.
        damping: absolute damping added to every layer's eigenvalues; None = `damping_factor x mean eig`.
        damping_factor: relative damping used when `damping` is None (kronfluence's heuristic, 0.1).
        weight_decay: L2 coefficient added to the eigenvalues (`wd I` from the term `wd/2 ||theta||^2`).
        seed: seed of the sampled labels (true Fisher).
        fisher_samples: labels sampled per example (1 as in kronfluence; more lowers the sampling noise).
        batch_size: examples per fitting batch.
    """

    def __init__(
        self,
        model: nn.Module,
        params: str | Sequence[str] = "all",
        corrected: bool = True,
        damping: float | None = None,
        damping_factor: float = 0.1,
        weight_decay: float = 0.0,
        seed: int = 0,
        fisher_samples: int = 1,
        batch_size: int = 128,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_damping(damping, damping_factor, weight_decay)
        self.device, self.dtype = device or get_device(), dtype or get_dtype()
        self.model = model.to(self.device, self.dtype).eval()
        self.subset = ParamSubset.resolve(model, params)
        self.layers = find_layers(model, self.subset)
        self.corrected, self.damping, self.damping_factor = corrected, damping, damping_factor
        if fisher_samples < 1 or batch_size < 1:
            raise ConfigError(f"fisher_samples, batch_size must be >= 1, got {fisher_samples}, {batch_size}.")
        self.weight_decay, self.seed, self.batch_size = weight_decay, seed, batch_size
        self.fisher_samples = fisher_samples
        self.factors_: dict[str, LayerFactors] = {}

    def _sub_batch(self, inputs: torch.Tensor) -> int:
        """Examples per forward + backward: `batch_size`, or fewer when the activations a batch keeps for
        backward would exceed `DEFAULT_MEMORY_BYTES` (the text models' long inputs)."""
        if len(inputs) <= 1:
            return self.batch_size
        with torch.random.fork_rng(devices=[]):
            saved = forward_saved_bytes(self.model, inputs)
        return max(1, min(self.batch_size, DEFAULT_MEMORY_BYTES // max(1, SAVED_COPIES * saved)))

    def _passes(self, inputs: torch.Tensor, report: Callable[[int, int], None] | None = None):
        """Yield per forward + backward the captured `{layer: [a, ds]}` with labels sampled from the model
        (seeded).

        A batch of `batch_size` examples whose activations would not fit in memory is differentiated in
        sub-batches (`_sub_batch`), one store each; class labels are drawn row by row from one generator, so
        the draws are those of the whole batch and the result does not depend on the sub-batch size (a
        regression model's Gaussian targets are drawn per sub-batch)."""
        gen = torch.Generator().manual_seed(self.seed)
        sub = self._sub_batch(inputs)
        task = task_of(self.model)
        for s in range(0, len(inputs), self.batch_size):
            x = inputs[s : s + self.batch_size].to(self.device)
            x = x.to(self.dtype) if x.is_floating_point() else x
            for _ in range(self.fisher_samples):
                for i in range(0, len(x), sub):
                    with capture_layers(self.model, self.layers) as store:
                        logits = self.model(x[i : i + sub])
                        y = sample_fisher_targets(task, logits, gen)
                        self.model.zero_grad(set_to_none=True)
                        batch_loss(task, logits, y).sum().backward()
                    yield store
            if report is not None:  # examples done in this pass (also where a cancel is noticed)
                report(min(s + self.batch_size, len(inputs)), len(inputs))
        self.model.zero_grad(set_to_none=True)

    def _covariances(
        self, inputs: torch.Tensor, report: Callable[[int, int], None] | None = None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per layer the covariances `(A [d_in, d_in], S [d_out, d_out])` (float64) over `inputs`;
        `report(examples done, n)` after each batch."""
        n = len(inputs)
        if n == 0:
            raise ConfigError("cannot fit curvature on an empty training set.")
        cov = {
            i.name: [
                torch.zeros(i.d_in, i.d_in, dtype=torch.float64, device=self.device),
                0,
                torch.zeros(i.d_out, i.d_out, dtype=torch.float64, device=self.device),
            ]
            for i in self.layers
        }
        for store in self._passes(inputs, report):
            for name, (a, ds) in store.items():
                a2 = a.reshape(-1, a.shape[-1])
                cov[name][0] += (a2.T @ a2).double()
                cov[name][1] += len(a2)
                d2 = ds.reshape(-1, ds.shape[-1])
                cov[name][2] += (d2.T @ d2).double()
        return {
            name: (a_sum / count, s_sum / (n * self.fisher_samples))
            for name, (a_sum, count, s_sum) in cov.items()
        }

    def _set_basis(self, cov: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Eigendecompose the covariances; K-FAC eigenvalues `l_S[o] l_A[i]` (EK-FAC corrects them later)."""
        for info in self.layers:
            a, s = cov[info.name]
            l_a, q_a = torch.linalg.eigh(a)
            l_s, q_s = torch.linalg.eigh(s)
            eig = torch.outer(l_s.clamp_min(0), l_a.clamp_min(0))
            self.factors_[info.name] = LayerFactors(q_a, q_s, eig)

    def _set_damping(self) -> None:
        for f in self.factors_.values():
            f.damping = absolute_damping(
                self.damping, self.damping_factor, lambda f=f: float(f.eigenvalues.mean())
            )

    def fit(self, inputs: torch.Tensor, progress: Progress | None = None) -> KroneckerCurvature:
        """Fit covariances, eigendecompose, (EK-FAC) correct eigenvalues; `inputs` model-ready `[n, ...]`."""
        n, stages = len(inputs), 2 if self.corrected else 1

        def stage(k: int, what: str) -> Callable[[int, int], None] | None:
            if progress is None:
                return None
            return lambda done, total: progress(
                k * n + done, stages * n, f"curvature: {what} ({done}/{total})"
            )

        self._set_basis(self._covariances(inputs, stage(0, "covariances")))
        if self.corrected:
            self._correct_eigenvalues(inputs, stage(1, "eigenvalue correction"))
        self._set_damping()
        return self

    def _correct_eigenvalues(
        self, inputs: torch.Tensor, report: Callable[[int, int], None] | None = None
    ) -> None:
        sums = {
            i.name: torch.zeros(i.d_out, i.d_in, dtype=torch.float64, device=self.device) for i in self.layers
        }
        for store in self._passes(inputs, report):
            for name, (a, ds) in store.items():
                f = self.factors_[name]
                qa, qs = a @ f.q_a.to(a.dtype), ds @ f.q_s.to(ds.dtype)
                if a.shape[1] == 1:  # one position: (Q_S^T ds a^T Q_A)^2 = outer(qs^2, qa^2)
                    sums[name] += (qs[:, 0].square().T @ qa[:, 0].square()).double()
                else:
                    sums[name] += torch.einsum("blo,bli->boi", qs, qa).square().sum(0).double()
        for name, total in sums.items():
            self.factors_[name].eigenvalues = total / (len(inputs) * self.fisher_samples)

    def _check(self, grads: torch.Tensor) -> None:
        if not self.factors_:
            raise NotFittedError("curvature: call fit(inputs) first.")
        if grads.ndim != 2 or grads.shape[1] != self.subset.numel:
            raise ConfigError(f"expected gradients [b, {self.subset.numel}], got {tuple(grads.shape)}.")

    def _rotated(self, grads: torch.Tensor, info: LayerInfo) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.factors_[info.name]
        g = flat_to_layer(grads, info)
        rot = f.q_s.T.to(g) @ g @ f.q_a.to(g)
        return rot, (f.eigenvalues + self.weight_decay + f.damping).to(g)

    def inverse_hvp(self, grads: torch.Tensor) -> torch.Tensor:
        """`(H + (wd + lambda) I)^{-1} g_i` for flat gradient rows `grads [b, p]` -> `[b, p]` (same dtype)."""
        self._check(grads)
        out = torch.empty_like(grads)
        for info in self.layers:
            rot, denom = self._rotated(grads, info)
            f = self.factors_[info.name]
            layer_to_flat(f.q_s.to(rot) @ (rot / denom) @ f.q_a.T.to(rot), info, out)
        return out

    def quadratic(self, grads: torch.Tensor) -> torch.Tensor:
        """`g_i^T (H + (wd + lambda) I)^{-1} g_i` for rows `grads [b, p]` -> `[b]`, computed directly."""
        self._check(grads)
        total = grads.new_zeros(len(grads))
        for info in self.layers:
            rot, denom = self._rotated(grads, info)
            total += (rot.square() / denom).sum((1, 2))
        return total

    def apply_spectral(self, grads: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`fn(H + (wd + lambda) I) g_i` for flat rows `grads [b, p]` -> `[b, p]` (same dtype).

        Per layer `Q_S [(Q_S^T G Q_A) * fn(eig + wd + lambda)] Q_A^T`: `fn` maps the shifted eigenvalues
        (float64 `[d_out, d_in]`, >= 0) elementwise to multipliers, e.g. `1 / s` gives `inverse_hvp`.
        """
        self._check(grads)
        out = torch.empty_like(grads)
        for info in self.layers:
            f = self.factors_[info.name]
            g = flat_to_layer(grads, info)
            rot = f.q_s.T.to(g) @ g @ f.q_a.to(g)
            mult = fn((f.eigenvalues + self.weight_decay + f.damping).clamp_min(0)).to(rot)
            layer_to_flat(f.q_s.to(rot) @ (rot * mult) @ f.q_a.T.to(rot), info, out)
        return out


def fit_averaged(
    curvatures: Sequence[KroneckerCurvature],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    progress: Progress | None = None,
) -> KroneckerCurvature:
    """One curvature averaged over several models (e.g. the checkpoints of a Source segment).

    The covariances `A` and `S` are averaged over the models and eigendecomposed once; EK-FAC then
    corrects the eigenvalues of every model in that shared basis and averages them (K-FAC keeps
    `l_S[o] l_A[i]` of the averaged factors). Damping is set from the averaged eigenvalues.

    Args:
        curvatures: unfitted curvatures of the models, built with the same settings and parameter subset.
        inputs: model-ready inputs `[n, ...]` the curvature is taken over, one tensor for all models or one
            per model (text models tokenize per model).

    Returns:
        `curvatures[0]`, fitted with the averaged factors (its `inverse_hvp`, `apply_spectral`, ... use them).
    """
    if not curvatures:
        raise ConfigError("fit_averaged needs at least one curvature.")
    first = curvatures[0]
    names = [i.name for i in first.layers]
    if any([i.name for i in c.layers] != names or c.corrected != first.corrected for c in curvatures):
        raise ConfigError("fit_averaged: every curvature must cover the same layers with the same settings.")
    per_model = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs] * len(curvatures)
    if len(per_model) != len(curvatures):
        raise ConfigError(f"fit_averaged: {len(per_model)} input sets for {len(curvatures)} curvatures.")
    covs = [c._covariances(x) for c, x in zip(curvatures, per_model, strict=True)]
    mean_cov = {
        name: (sum(cv[name][0] for cv in covs) / len(covs), sum(cv[name][1] for cv in covs) / len(covs))
        for name in names
    }
    for i, c in enumerate(curvatures):
        c._set_basis(mean_cov)
        if first.corrected:
            c._correct_eigenvalues(per_model[i])
        if progress is not None:
            progress(i + 1, len(curvatures), f"curvature: model {i + 1}/{len(curvatures)} fitted")
    for name in names:
        first.factors_[name].eigenvalues = sum(c.factors_[name].eigenvalues for c in curvatures) / len(
            curvatures
        )
    first._set_damping()
    return first
