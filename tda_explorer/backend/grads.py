"""Per-example gradients with `torch.func`, in memory-bounded chunks, over a named parameter subset.

Convention: `grads[i]` is the gradient of example i's own objective (cross-entropy
loss, or the TRAK margin) w.r.t. the selected parameters, flattened in the order of
`ParamSubset.names`. Shapes: `[n, p]` with p = `ParamSubset.numel`. The model is
evaluated in eval mode (dropout off) unless the caller passes a model in train mode
with fixed masks (see the ensemble attributors).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from tda_explorer.backend.device import get_device, get_dtype
from tda_explorer.errors import ConfigError
from tda_explorer.models.networks import head_prefix
from tda_explorer.models.tasks import (  # noqa: F401  (re-exported: the per-example objectives)
    TASK_OBJECTIVES,
    example_loss,
    example_margin,
    example_prob,
    objective_fn,
    task_of,
)

DEFAULT_MEMORY_BYTES = 512 * 2**20  # budget for one chunk of per-example gradients and their intermediates


@dataclass(frozen=True)
class ParamSubset:
    """An ordered set of trainable parameters, by name.

    `spec` is "all" (every parameter that requires grad), "head" (the final Linear), "lora" (the
    trainable LoRA adapter matrices, names containing "lora_", plus the head), or a sequence of name
    prefixes (e.g. ["head.", "body.3."]).
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def numel(self) -> int:
        total = 0
        for s in self.shapes:
            n = 1
            for d in s:
                n *= d
            total += n
        return total

    @classmethod
    def resolve(cls, model: nn.Module, spec: str | Sequence[str] = "all") -> ParamSubset:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if spec == "all":
            chosen = named
        elif spec == "lora":
            head = head_prefix(model)
            chosen = [(n, p) for n, p in named if "lora_" in n or n.startswith(head)]
            if not any("lora_" in n for n, _ in chosen):
                raise ConfigError(
                    "parameter subset 'lora' needs a model with trainable LoRA adapters (e.g. the text model "
                    "with lora_rank > 0, or a LoRA ensemble member); use 'all' or 'head' otherwise."
                )
        else:
            prefixes = (head_prefix(model),) if spec == "head" else tuple(spec)
            chosen = [(n, p) for n, p in named if n.startswith(prefixes) or n in prefixes]
        if not chosen:
            available = ", ".join(n for n, _ in named[:12])
            raise ConfigError(
                f"parameter subset {spec!r} matches no trainable parameter; available: {available}"
            )
        return cls(tuple(n for n, _ in chosen), tuple(tuple(p.shape) for _, p in chosen))


OBJECTIVES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = TASK_OBJECTIVES[
    "classification"
]
"""The classification objectives by name (every task's are in `models.tasks.TASK_OBJECTIVES`)."""


ACTIVATION_COPIES = 4
"""Memory of one example under `vmap(grad(...))` ~ this many times the activations its forward saves for
backward (MiniLM + LoRA on SST-2: 80 of the longest sentences take 719 MB, 9 MB each, for 2.3 MB saved)."""


def chunk_size_for(
    numel: int, itemsize: int = 4, memory_bytes: int = DEFAULT_MEMORY_BYTES, activation_bytes: int = 0
) -> int:
    """Examples per chunk so that ~4 copies of a `[chunk, numel]` gradient and `ACTIVATION_COPIES` copies of
    each example's activations saved for the backward pass (`activation_bytes`, see
    `saved_activation_bytes`) fit in `memory_bytes`. The activations dominate for transformers (a LoRA text
    model's gradient is ~25k numbers, its top two layers save ~20x more per 58-token sentence)."""
    per_example = 4 * numel * itemsize + ACTIVATION_COPIES * activation_bytes
    return max(1, int(memory_bytes // max(1, per_example)))


def saved_activation_bytes(
    model: nn.Module, params: dict[str, torch.Tensor], frozen: dict, buffers: dict, x: torch.Tensor, y, fn
) -> int:
    """Bytes autograd saves for the backward pass of one example's objective (`x`: one model-ready input),
    weights and buffers excluded (under `vmap` they are shared by the chunk, not per example)."""

    def loss(leaves: dict, xi: torch.Tensor, yi) -> torch.Tensor:
        out = functional_call(model, ({**frozen, **leaves}, buffers), (xi.unsqueeze(0),))
        return fn(out.squeeze(0), yi)

    shared = [*params.values(), *frozen.values(), *buffers.values()]
    return activation_bytes(loss, params, shared, x, y)


def activation_bytes(loss_fn: Callable, params: dict, shared: Sequence[torch.Tensor], *args) -> int:
    """Bytes of the tensors autograd saves for backward in `loss_fn(params, *args)` (one example), not
    counting those sharing storage with `shared` (weights, buffers: not per-example)."""
    skip = {t.untyped_storage().data_ptr() for t in shared}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.untyped_storage().data_ptr() not in skip:
            total += t.numel() * t.element_size()
        return t

    live = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(live, *args)
    return total


def forward_saved_bytes(model: nn.Module, inputs: torch.Tensor) -> int:
    """Bytes autograd saves for backward per example in a plain `model(x)` forward (the example of `inputs`
    with the most non-zero entries, in the model's parameter dtype; weights and buffers not counted).

    Used to size batches whose activations are kept for a batched backward (`backend.curvature`)."""
    x = inputs[_largest_example(inputs)].unsqueeze(0)
    first = next(model.parameters(), None)
    if first is not None:
        x = x.to(first.device)
        x = x.to(first.dtype) if x.is_floating_point() else x
    shared = [*model.parameters(), *model.buffers()]
    return activation_bytes(lambda _params, xb: model(xb), {}, shared, x)


def _largest_example(inputs: torch.Tensor) -> int:
    """Index of the example with the most non-zero input entries (the longest text: padding is zero)."""
    if len(inputs) == 1:
        return 0
    return int(inputs.reshape(len(inputs), -1).ne(0).sum(1).argmax())


def iter_example_grads(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    params: str | Sequence[str] | ParamSubset = "all",
    objective: str = "loss",
    chunk_size: int | None = None,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield `(start, grads)` with `grads` of shape `[b, p]` for examples `start:start+b`, in order.

    Args:
        model: a module mapping `inputs[i:i+1]` to logits `[1, C]`.
        inputs: model-ready tensor `[n, ...]` (tokenized for text models).
        labels: the targets `[n]` (int64 classes, or floats for a regression model; see `models.tasks`).
        params: which parameters to differentiate (see ParamSubset).
        objective: "loss" (the task's training loss: cross-entropy), "margin" (TRAK's log-odds margin; the
            output for regression) or "prob" (`p(label | x)`), per `models.tasks`.
        chunk_size: examples per chunk (default from `memory_bytes`).

    A model with a `trim_padding(x)` method (the text models) gets each chunk trimmed by it first, so short
    texts are not differentiated at the full token limit (same gradients, less work and memory).
    """
    device = device or get_device()
    dtype = dtype or get_dtype()
    fn = objective_fn(task_of(model), objective)
    subset = params if isinstance(params, ParamSubset) else ParamSubset.resolve(model, params)
    model = model.to(device)
    all_params = {n: p.detach().to(dtype) for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    chosen = {n: all_params[n] for n in subset.names}
    frozen = {n: p for n, p in all_params.items() if n not in chosen}

    def one(trainable: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, ({**frozen, **trainable}, buffers), (x.unsqueeze(0),))
        return fn(logits.squeeze(0), y)

    per_example = vmap(grad(one), in_dims=(None, 0, 0), randomness="same")
    n = len(labels)
    b = chunk_size
    if b is None:
        i = _largest_example(inputs) if n else 0  # the longest text (the model trims padding outside vmap)
        x0 = inputs[i : i + 1].to(device)
        x0 = x0.to(dtype) if x0.is_floating_point() else x0
        act = (
            saved_activation_bytes(model, chosen, frozen, buffers, x0[0], labels[i].to(device), fn)
            if n
            else 0
        )
        b = chunk_size_for(subset.numel, torch.finfo(dtype).bits // 8, memory_bytes, act)
    trim = getattr(model, "trim_padding", None)
    for start in range(0, n, b):
        x = inputs[start : start + b].to(device)
        if trim is not None:
            x = trim(x)
        if x.is_floating_point():
            x = x.to(dtype)
        y = labels[start : start + b].to(device)
        g = per_example(chosen, x, y)
        yield start, torch.cat([g[name].reshape(len(y), -1) for name in subset.names], dim=1)


def example_grads(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, **kwargs) -> torch.Tensor:
    """All per-example gradients at once, `[n, p]` (see `iter_example_grads` for the arguments)."""
    out = None  # filled chunk by chunk (no list + cat: that would hold the gradients twice)
    for start, g in iter_example_grads(model, inputs, labels, **kwargs):
        if out is None:
            out = torch.empty(len(labels), g.shape[1], dtype=g.dtype, device=g.device)
        out[start : start + len(g)] = g
    if out is None:
        raise ConfigError("example_grads needs at least one example.")
    return out
