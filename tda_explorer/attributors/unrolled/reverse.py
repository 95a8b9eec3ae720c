"""Reverse-mode differentiation of a query measurement through every recorded optimizer step.

Step t maps `(theta_t, state_t, w)` to `(theta_{t+1}, state_{t+1})` with the data weights entering only
through the batch gradient `G_t(theta, w) = grad_theta (1/B_t) sum_{i in B_t} w_i l_i(theta)` (dropout
masks replayed from the step's RNG state). Given the cotangents `a` of `theta_{t+1}` and `s̄` of the
optimizer state, the cotangent `ḡ` of the step's full gradient `g = G_t + wd theta_t` is (exactly):

- SGD:       `ḡ = -eta a`
- momentum:  `b' = beta b + g`, `theta' = theta - eta b'`:  `c = b̄ - eta a`, `ḡ = c`, `b̄ <- beta c`
- Adam (torch's, bias-corrected, eps outside the root, coupled weight decay):
  `m̄_tot = m̄ - (eta/bc1) a / d`, `v̄_tot = v̄ + a (eta/bc1) m' / (d^2 2 sqrt(bc2) sqrt(v'))`,
  `ḡ = (1 - b1) m̄_tot + 2 (1 - b2) g v̄_tot`, `m̄ <- b1 m̄_tot`, `v̄ <- b2 v̄_tot`
  with `d = sqrt(v')/sqrt(bc2) + eps` (the term is 0 where v' = 0)

and then one vector-Jacobian product of `G_t` w.r.t. `(theta, w)` with cotangent `ḡ` gives
`(H_t ḡ, [<ḡ, grad l_i(theta_t)> / B_t]_i)`: `a <- a + wd ḡ + H_t ḡ` and `dm/dw_i += <ḡ, grad l_i> / B_t`.
All rows of `a` (one per query) go through one `vmap` of that product. The optimizer state's cotangent
starts at 0 at each stage's end and is dropped at its start (every stage begins with a fresh optimizer).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

from tda_explorer.attributors.unrolled.chain import ChainStep, chain_weights
from tda_explorer.attributors.unrolled.replay import FlatParams, Trajectory
from tda_explorer.backend.grads import OBJECTIVES
from tda_explorer.errors import ConfigError


def batch_gradient(
    model: nn.Module, flat: FlatParams, x: torch.Tensor, y: torch.Tensor
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`G(theta [p], w [B]) -> grad_theta (1/B) sum_i w_i CE(model(x_i), y_i)` `[p]` (module in its mode)."""
    buffers = dict(model.named_buffers())

    def loss(theta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (flat.unflatten(theta), buffers), (x,))
        return (F.cross_entropy(logits, y, reduction="none") * w).sum() / len(y)

    return grad(loss)


def measurement_gradients(
    model: nn.Module,
    flat: FlatParams,
    theta: torch.Tensor,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    objective: str = "loss",
) -> torch.Tensor:
    """`grad_theta m(q; theta)` `[n, p]` of each row (eval mode, no dropout); `objective` as `backend.grads`."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective {objective!r} is not one of {sorted(OBJECTIVES)}.")
    fn, buffers = OBJECTIVES[objective], dict(model.named_buffers())

    def one(th: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fn(functional_call(model, (flat.unflatten(th), buffers), (x.unsqueeze(0),)).squeeze(0), y)

    was_training = model.training
    model.eval()
    try:
        return vmap(grad(one), in_dims=(None, 0, 0))(theta, inputs, targets)
    finally:
        model.train(was_training)


def _optimizer_adjoint(kind: str, a: torch.Tensor, state: list[torch.Tensor], ctx: dict) -> torch.Tensor:
    """`ḡ` from `a` and the state cotangents (updated in place in `state`), see the module docstring."""
    lr = ctx["lr"]
    if kind == "sgd":
        return a * -lr
    if kind == "momentum":  # in place (these [n_rows, p] passes cost as much as the vjp): b̄ becomes c;
        return state[0].sub_(a, alpha=lr)  # the caller scales it by beta once the vjp has used it
    m_new, v_new, g, (b1, b2), eps, tt = ctx["m"], ctx["v"], ctx["g"], ctx["betas"], ctx["eps"], ctx["step"]
    bc1, sb = 1 - b1**tt, math.sqrt(1 - b2**tt)
    size = lr / bc1
    root = v_new.sqrt()
    denom = root / sb + eps
    coef = torch.where(
        root > 0, size * m_new / (denom.square() * 2 * sb * root.clamp_min(torch.finfo(root.dtype).tiny)), 0.0
    )
    m_tot = state[0] - a * (size / denom)
    v_tot = state[1] + a * coef
    state[0], state[1] = b1 * m_tot, b2 * v_tot
    return (1 - b1) * m_tot + (2 * (1 - b2)) * g * v_tot


def reverse_pass(
    traj: Trajectory,
    cotangent: torch.Tensor,
    progress: Callable[[int, int], None] | None = None,
    fast: bool = True,
) -> torch.Tensor:
    """`dm/dw` float64 `[n_rows, N]` for final-parameter cotangents `grad m(theta_T)` `[n_rows, p]`.

    Replays each segment (last first) from its snapshot and walks its steps backwards; `progress(done,
    total)` is called with the steps walked so far after each segment. `fast`: use the closed-form step
    of `chain` when the model is a Linear/ReLU chain without dropout (False = autograd's double backward).
    """
    a = cotangent.to(traj.dtype).clone()
    out = torch.zeros(len(a), len(traj.data), dtype=torch.float64)
    labels, walked = traj.data.labels, 0
    for k in reversed(range(len(traj.plans))):
        kind, cfg = traj.optimizer_kind(k), traj.plans[k].config
        model, opt = traj.models[k], traj.optimizers[k]
        state = [torch.zeros_like(a) for _ in range({"sgd": 0, "momentum": 1, "adam": 2}[kind])]
        ctx: dict = {}
        if kind == "adam":
            ctx |= {"betas": opt.param_groups[0]["betas"], "eps": opt.param_groups[0]["eps"]}
        model.train()
        chain = fast and traj.chain is not None
        shapes, sizes = traj.flat.shapes, traj.flat.sizes
        for seg in reversed([s for s in traj.segments if s.stage == k]):
            taped = chain and seg.start in traj.tapes
            rep = None if taped else traj.replay(seg)
            for g in reversed(range(seg.start, seg.stop)):
                step = traj.steps[g]
                x, y = traj.inputs[step.batch], labels[step.batch]
                if taped:
                    weights, acts, logits = traj.tapes[g]
                    fwd = ChainStep(shapes, weights, [x.flatten(1), *acts], logits, y)
                    grad_t = None  # only Adam needs it, and Adam stages are not taped
                elif chain:
                    theta = rep.thetas[g - seg.start]
                    fwd = ChainStep(
                        shapes, chain_weights(sizes, shapes, theta), *rep.forwards[g - seg.start], y
                    )
                    grad_t = fwd.gradient() if kind == "adam" else None
                else:
                    theta = rep.thetas[g - seg.start]
                    fn = batch_gradient(model, traj.flat, x, y)
                    w = torch.ones(len(step.batch), dtype=theta.dtype)
                    with torch.random.fork_rng(devices=[]):
                        torch.set_rng_state(step.rng)
                        grad_t, vjp_fn = vjp(fn, theta, w)
                ctx["lr"] = step.lr
                if kind == "adam":
                    m_new, v_new = rep.moments[g - seg.start]
                    ctx |= {
                        "m": m_new,
                        "v": v_new,
                        "g": grad_t + cfg.weight_decay * theta,
                        "step": step.t + 1,
                    }
                gbar = _optimizer_adjoint(kind, a, state, ctx)
                if chain:
                    wbar = fwd.vjp_into(gbar, a)
                else:
                    hv, wbar = vmap(vjp_fn)(gbar)
                    a.add_(hv)
                if cfg.weight_decay:
                    a.add_(gbar, alpha=cfg.weight_decay)
                if kind == "momentum":
                    state[0].mul_(cfg.momentum)
                out.index_add_(1, step.batch, wbar.to(torch.float64))
            if progress is not None:
                walked += seg.stop - seg.start
                progress(walked, traj.total_steps)
    return out
