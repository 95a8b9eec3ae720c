"""Closed-form reverse step for Linear/ReLU chains (the zoo's `mlp` without dropout and `logreg`).

For these models the vector-Jacobian product the reverse pass needs per optimizer step (`reverse`:
`(H_t ḡ, [<ḡ, grad l_i(theta_t)> / B]_i)` of the batch loss `G_t = (1/B) sum_i w_i CE(z_i, y_i)` at
`w = 1`) is written out with Pearlmutter's R-operator instead of autograd's double backward: one forward
pass (activations `a_l`, ReLU masks `m_l`, softmax `p`), the tangents `R(.)` of every pre-activation
along each direction `ḡ` (a forward pass linear in `ḡ`), then their backward. Layers `l = 0..L-1`, weight
`W_l [d_{l+1}, d_l]`, bias `b_l`; `a_0` = the flattened inputs `[B, d_0]`; `z_l = a_l W_l^T + b_l`,
`a_{l+1} = relu(z_l)`; logits `z_{L-1}`; `δ_{L-1} = (p - onehot(y)) / B`, `δ_l = (δ_{l+1} W_{l+1}) ⊙ m_l`.
With `ḡ` split as `(V_l, c_l)`:

    R(z_l) = R(a_l) W_l^T + a_l V_l^T + c_l,      R(a_{l+1}) = R(z_l) ⊙ m_l,      R(a_0) = 0
    R(δ_{L-1}) = (p ⊙ R(z) - p (p . R(z))) / B
    R(δ_l) = (R(δ_{l+1}) W_{l+1} + δ_{l+1} V_{l+1}) ⊙ m_l
    (H ḡ)_{W_l} = R(δ_l)^T a_l + δ_l^T R(a_l),    (H ḡ)_{b_l} = sum_i R(δ_l)_i
    <ḡ, grad l_i> / B = δ_{L-1, i} . R(z_{L-1})_i

(the ReLU's second derivative is 0 almost everywhere, as in autograd, whose ReLU backward uses the same
mask `z > 0`). All `Q` directions go through batched matmuls `[Q, B, d]`. Cost per step and direction:
about two products of the size of the first layer (`a_0 V_0^T` and `R(δ_0)^T a_0`) plus the small layers,
against about four gradient evaluations for autograd's double backward; no Python per layer beyond the
loop over `L` layers. Checked against the autograd path in float64 (`tests/attributors/test_unrolled_chain.py`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def linear_chain(model: nn.Module, flat_names: tuple[str, ...]) -> list[str] | None:
    """Prefixes of the Linear layers (in order) when `model` is a Flatten/Linear/ReLU chain, else None.

    The chain must be the zoo's layout (`body` = Flatten, then Linear/ReLU pairs, Dropout only with p = 0;
    `head` Linear; forward `head(body(x))`) with every parameter trainable, in the flat order
    `[W_0, b_0, W_1, b_1, ...]` (`flat_names`).
    """
    from tda_explorer.models.networks import MLP, LogReg

    if type(model) not in (MLP, LogReg):
        return None
    mods = list(model.body) if isinstance(model.body, nn.Sequential) else [model.body]
    if not mods or not isinstance(mods[0], nn.Flatten) or mods[0].start_dim != 1:
        return None
    names, expect = [], nn.Linear
    for i, m in enumerate(mods[1:], start=1):
        if isinstance(m, nn.Dropout) and m.p == 0:
            continue
        if not isinstance(m, expect):
            return None
        if isinstance(m, nn.Linear):
            names.append(f"body.{i}")
        expect = nn.ReLU if expect is nn.Linear else nn.Linear
    if expect is not nn.Linear:  # the chain must end on a ReLU before the head
        return None
    names.append("head")
    want = tuple(f"{n}.{w}" for n in names for w in ("weight", "bias"))
    return names if tuple(flat_names) == want else None


def chain_train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    layers: list[str],
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`training.weighted.train_step` (unweighted) for a chain, keeping its forward pass.

    The same operations as the module's forward (flatten, `F.linear`, `torch.relu`, `F.cross_entropy`),
    so the step is bit for bit the trainer's. Returns the layer inputs `[a_0, ..., a_{L-1}]` and the
    logits `[B, C]`, detached.
    """
    for group in opt.param_groups:
        group["lr"] = lr
    mods = [model.get_submodule(n) for n in layers]
    h, acts = x.flatten(1), []
    for i, m in enumerate(mods):
        acts.append(h.detach())
        h = F.linear(h, m.weight, m.bias)
        if i < len(mods) - 1:
            h = torch.relu(h)
    loss = F.cross_entropy(h, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return acts, h.detach()


def chain_weights(sizes: tuple[int, ...], shapes: tuple, theta: torch.Tensor) -> list[torch.Tensor]:
    """`[W_1, ..., W_{L-1}]` (views) of flat parameters `theta` `[p]`: what `ChainStep` needs of them."""
    parts = theta.split(sizes)
    return [parts[i].view(shapes[i]) for i in range(2, len(parts), 2)]


def tape_bytes_per_step(shapes: tuple, batch_size: int, itemsize: int) -> int:
    """Bytes of one step's tape (`Trajectory.record`): `W_1..W_{L-1}`, `a_1..a_{L-1}` and the logits."""
    weights = sum(math.prod(s) for s in shapes[2::2])
    widths = sum(s[0] for s in shapes[0::2])  # d_1 .. d_{L-1} and C
    return (weights + batch_size * widths) * itemsize


class ChainStep:
    """The reverse step of one optimizer step for a Linear/ReLU chain (see module docstring).

    Args:
        shapes: the flat layout's parameter shapes (`[W_0, b_0, W_1, b_1, ...]`).
        weights: `[W_1, ..., W_{L-1}]` at the step's parameters (`W_0` and the biases are not needed).
        acts: the layer inputs `[a_0 [B, d_0], ..., a_{L-1}]` (`chain_train_step`).
        logits: `[B, C]` at the step's parameters.
        y: the batch's labels `[B]`.
    """

    def __init__(
        self,
        shapes: tuple,
        weights: list[torch.Tensor],
        acts: list[torch.Tensor],
        logits: torch.Tensor,
        y: torch.Tensor,
    ) -> None:
        self.shapes = [tuple(s) for s in shapes]
        self.W = [None, *weights]
        self.n = len(y)
        self.acts = acts
        self.masks = [a > 0 for a in acts[1:]]
        self.p = torch.softmax(logits, dim=-1)
        d = self.p.clone()
        d[torch.arange(self.n), y] -= 1
        deltas = [d / self.n]
        for i in range(len(self.W) - 1, 0, -1):
            deltas.insert(0, (deltas[0] @ self.W[i]) * self.masks[i - 1])
        self.deltas = deltas

    def gradient(self) -> torch.Tensor:
        """`grad_theta G_t` flat `[p]` (Adam needs it)."""
        parts = []
        for a, d in zip(self.acts, self.deltas, strict=True):
            parts += [(d.T @ a).reshape(-1), d.sum(0)]
        return torch.cat(parts)

    def vjp_into(self, gbar: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Add `H_t ḡ` to the cotangents `a` `[Q, p]` (in place) and return `[<ḡ, grad l_i> / B]` `[Q, B]`.

        Args:
            gbar: `[Q, p]` directions (the cotangent of the step's gradient).
            a: `[Q, p]` cotangents of the parameters, updated in place.
        """
        q, n_layers = len(gbar), len(self.W)
        offsets = [0]
        for s in self.shapes:
            offsets.append(offsets[-1] + math.prod(s))

        def weight(t: torch.Tensor, i: int) -> torch.Tensor:  # [Q, d_out, d_in] view of layer i's weight
            return t[:, offsets[2 * i] : offsets[2 * i + 1]].view(q, *self.shapes[2 * i])

        def bias(t: torch.Tensor, i: int) -> torch.Tensor:
            return t[:, offsets[2 * i + 1] : offsets[2 * i + 2]]

        V = [weight(gbar, i) for i in range(n_layers)]
        acts = [x.expand(q, -1, -1) for x in self.acts]
        r_acts: list[torch.Tensor | None] = [None]
        rz = torch.baddbmm(bias(gbar, 0).unsqueeze(1), acts[0], V[0].transpose(1, 2))
        for i in range(1, n_layers):
            ra = rz.mul_(self.masks[i - 1])
            r_acts.append(ra)
            rz = torch.baddbmm(bias(gbar, i).unsqueeze(1), acts[i], V[i].transpose(1, 2))
            rz.baddbmm_(ra, self.W[i].T.expand(q, -1, -1))
        wbar = (rz * self.deltas[-1]).sum(-1)
        rd = (rz - (self.p * rz).sum(-1, keepdim=True)).mul_(self.p / self.n)
        for i in range(n_layers - 1, -1, -1):
            block = weight(a, i)
            block.baddbmm_(rd.transpose(1, 2), acts[i])
            if r_acts[i] is not None:
                block.baddbmm_(self.deltas[i].T.expand(q, -1, -1), r_acts[i])
            bias(a, i).add_(rd.sum(1))
            if i > 0:
                d = torch.bmm(rd, self.W[i].expand(q, -1, -1))
                rd = d.baddbmm_(self.deltas[i].expand(q, -1, -1), V[i]).mul_(self.masks[i - 1])
        return wbar
