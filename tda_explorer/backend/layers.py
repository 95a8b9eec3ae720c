"""Layer-wise views of a model for Kronecker-factored methods (K-FAC, EK-FAC, LoGra-style projection).

A supported layer is an `nn.Linear` (inputs `[B, d]` or `[B, ..., d]`) or an `nn.Conv2d` (groups=1,
zero padding). Every such layer is seen as `out = W_aug a_aug` with `W_aug = [W | b]` of shape
`[d_out, d_in + has_bias]` and `a_aug = [a, 1]`; a conv layer is a Linear over unfolded patches
(`d_in = C_in * kh * kw`, in the channel-major order of `F.unfold`, which matches `W.reshape(d_out, -1)`).

Per-example gradient of a layer: `G_i = sum_l ds_{i,l} a_{i,l}^T` `[d_out, d_in_aug]`, with `l` running
over positions (1 for a plain Linear, `H'W'` for a conv, tokens for a sequence Linear) and `ds` the
gradient of example i's objective w.r.t. the layer output at that position.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tda_explorer.backend.grads import ParamSubset
from tda_explorer.errors import ConfigError
from tda_explorer.models.tasks import batch_loss, objective_fn


@dataclass(frozen=True)
class LayerInfo:
    """A supported layer and where its parameters sit in the flat gradient of a ParamSubset.

    Attributes:
        name: module name (e.g. "body.1").
        kind: "linear" or "conv2d".
        d_in: input width incl. the bias column (`C_in*kh*kw + has_bias` for conv).
        d_out: output width (out_features / out_channels).
        has_bias: whether a bias column is appended.
        weight_slice / bias_slice: column ranges of weight / bias in the flat `[n, p]` gradient.
    """

    name: str
    kind: str
    d_in: int
    d_out: int
    has_bias: bool
    weight_slice: tuple[int, int]
    bias_slice: tuple[int, int] | None

    @property
    def numel(self) -> int:
        return self.d_in * self.d_out


def _check_conv(name: str, module: nn.Conv2d) -> None:
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise ConfigError(
            f"layer {name!r}: only Conv2d with groups=1, zero padding and integer padding is supported "
            f"(got groups={module.groups}, padding={module.padding!r}, padding_mode={module.padding_mode!r})."
        )


def find_layers(model: nn.Module, subset: ParamSubset) -> list[LayerInfo]:
    """The supported layers covering `subset`, in flat-gradient order.

    Raises:
        ConfigError: naming the parameters of `subset` that no supported layer covers, or a layer
            whose weight and bias are not both in the subset.
    """
    offsets, pos = {}, 0
    for n, shape in zip(subset.names, subset.shapes, strict=True):
        size = 1
        for d in shape:
            size *= d
        offsets[n] = (pos, pos + size)
        pos += size
    covered: set[str] = set()
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        prefix = f"{name}." if name else ""
        w, b = prefix + "weight", prefix + "bias"
        has_bias = module.bias is not None
        in_subset = [n for n in (w, b) if n in offsets]
        if not in_subset:
            continue
        if w not in offsets or (has_bias and b not in offsets):
            raise ConfigError(
                f"layer {name!r}: weight and bias must both be in the parameter subset, got {in_subset}."
            )
        if isinstance(module, nn.Conv2d):
            _check_conv(name, module)
        d_in = module.weight[0].numel() + int(has_bias)
        kind = "conv2d" if isinstance(module, nn.Conv2d) else "linear"
        layers.append(
            LayerInfo(name, kind, d_in, module.weight.shape[0], has_bias, offsets[w], offsets.get(b))
        )
        covered.update(in_subset)
    missing = [n for n in subset.names if n not in covered]
    if missing:
        raise ConfigError(
            f"parameters {missing} are not in a supported layer (nn.Linear or nn.Conv2d); "
            "restrict `params` (e.g. 'head') or use a solver without layer factors (cg, lissa, exact)."
        )
    return sorted(layers, key=lambda info: info.weight_slice[0])


def flat_to_layer(grads: torch.Tensor, layer: LayerInfo) -> torch.Tensor:
    """The layer's block of flat gradients `[b, p]` as matrices `[b, d_out, d_in]` (bias as last column)."""
    w = grads[:, layer.weight_slice[0] : layer.weight_slice[1]].reshape(len(grads), layer.d_out, -1)
    if layer.bias_slice is None:
        return w
    b = grads[:, layer.bias_slice[0] : layer.bias_slice[1]].reshape(len(grads), layer.d_out, 1)
    return torch.cat([w, b], dim=2)


def layer_to_flat(mats: torch.Tensor, layer: LayerInfo, out: torch.Tensor) -> None:
    """Write layer matrices `[b, d_out, d_in]` back into the flat `out [b, p]` (inverse of flat_to_layer)."""
    n = len(mats)
    if layer.bias_slice is None:
        out[:, layer.weight_slice[0] : layer.weight_slice[1]] = mats.reshape(n, -1)
        return
    out[:, layer.weight_slice[0] : layer.weight_slice[1]] = mats[:, :, :-1].reshape(n, -1)
    out[:, layer.bias_slice[0] : layer.bias_slice[1]] = mats[:, :, -1]


def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Layer input as `[B, L, d_in_aug]` (conv: unfolded patches; bias column of ones appended)."""
    if isinstance(module, nn.Conv2d):
        x = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride).transpose(1, 2)
    else:
        x = x.reshape(x.shape[0], -1, x.shape[-1])
    if module.bias is not None:
        x = torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)
    return x


def layer_output_grads(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. the layer output as `[B, L, d_out]`."""
    if isinstance(module, nn.Conv2d):
        return g.flatten(2).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


@contextlib.contextmanager
def capture_layers(model: nn.Module, layers: list[LayerInfo]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Hooks that record, per layer name, `[a, ds]`: inputs `[B, L, d_in]` and output grads `[B, L, d_out]`.

    Run one forward and one backward of a *sum* of per-example objectives inside the block; `ds` rows
    are then the per-example output gradients (valid for models without cross-example coupling, e.g.
    no batch norm in train mode).
    """
    modules = dict(model.named_modules())
    store: dict[str, list[torch.Tensor]] = {}
    handles = []

    def make_hook(name: str, module: nn.Module) -> Callable:
        def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            store[name] = [layer_inputs(module, inputs[0].detach())]
            if output.requires_grad:
                output.register_hook(lambda g: store[name].append(layer_output_grads(module, g.detach())))

        return hook

    for info in layers:
        module = modules[info.name]
        handles.append(module.register_forward_hook(make_hook(info.name, module)))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def batch_objective(
    logits: torch.Tensor, labels: torch.Tensor, objective: str = "loss", task: str = "classification"
) -> torch.Tensor:
    """Sum over the batch of per-example objectives: the task's loss ("loss") or TRAK margin ("margin";
    the output itself for regression, see `models.tasks`)."""
    if task != "classification":
        objective_fn(task, objective)  # ConfigError for an objective the task does not define
        if objective == "loss":
            return batch_loss(task, logits, labels).sum()
        if logits.shape[-1] != 1:
            raise ConfigError(f"the {task} measurement {objective!r} needs one output per example.")
        return logits.sum()
    if objective == "loss":
        return F.cross_entropy(logits, labels, reduction="sum")
    if objective == "margin":
        is_label = F.one_hot(labels, logits.shape[-1]).bool()
        others = logits.masked_fill(is_label, float("-inf"))
        return (logits.gather(1, labels[:, None]).squeeze(1) - torch.logsumexp(others, dim=-1)).sum()
    raise ConfigError(f"objective {objective!r} is not one of ['loss', 'margin'].")
