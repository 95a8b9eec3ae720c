"""Training the AirRep encoder with a pairwise ranking loss over subsets; checkpoints; early stopping.

For a label query x and two training subsets with labels `r_i > r_j` (S_i helps x more), the loss is

    w_ij * BCEWithLogits(gamma * (f(x, S_i) - f(x, S_j)), 1),   w_ij = clip(|r_i - r_j|, min_weight, max_weight)

averaged over all such ordered pairs of a step (pairs with `r_i = r_j` are skipped), where `f` is the
pooled group score (attention or sum, see `pooling.py`). `gamma = 1` is AirRep's loss; with
`logit_scale=True` (default) gamma > 0 is a learned scalar, initialised to 1 / std of the initial pair
differences. It does not change any ranking, but lets the loss reach its useful range without inflating
the scores: with attention pooling the score scale is also the softmax temperature, and on random half
subsets the differences `f_i - f_j` are tiny unless the scores grow until the pooling acts like a max
(which we measured to rank subsets worse); gamma takes that pressure off the scores. A step takes `queries_per_step` label queries
and `subsets_per_step` subsets; the training embeddings of the subsets' members are recomputed with
gradients at every step (optionally only a random sample of `members_per_step` of them).

Held-out set: a seeded fraction of the subsets and of the label queries never enter the loss. After
each epoch the group LDS on them (mean over held-out queries of the Spearman correlation between
`f(x, S_j)` and `r(x, S_j)` over the held-out subsets) is measured; the best epoch's weights are kept
and training stops after `patience` epochs without improvement.

Artifacts: a checkpoint (kind "airrep_ckpt": weights, AdamW state, best weights, history; replaced
after every epoch, so a killed training resumes at its last finished epoch) and the final encoder
(kind "airrep_encoder": the best weights, the history, the wall seconds).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tda_explorer.attributors.airrep.data import AirRepData
from tda_explorer.attributors.airrep.encoder import AirRepEncoder, EncoderConfig, build_encoder
from tda_explorer.attributors.airrep.pooling import POOLINGS, group_scores, pool
from tda_explorer.backend.stats import spearman_rows
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.store import Workspace, load_tensors, require_workspace, save_tensors
from tda_explorer.store.kinds import ArtifactKind, register_kind
from tda_explorer.training.trainer import Progress

ENCODER_KIND = "airrep_encoder"
#: Entries of one `[B, K, K]` block of subset pairs in the held-out loss (2^24): unblocked, the held-out
#: pairs of all B held-out queries take B * K^2 entries, which exhausts memory with thousands of subsets.
_PAIR_BLOCK = 1 << 24
CKPT_KIND = "airrep_ckpt"


@dataclass(frozen=True)
class RankTrainConfig:
    """How the encoder is trained.

    Args:
        lr: AdamW learning rate (constant after a linear warm-up of `warmup_steps`).
        weight_decay: AdamW decoupled weight decay.
        max_steps: if set, training stops after this many optimisation steps (the last epoch is cut short,
            then evaluated and checkpointed as usual): a fixed budget when an epoch is long (thousands of
            subsets). Left out of `to_dict` when None, so the keys of earlier encoders are unchanged.
        epochs: maximum number of epochs. An epoch visits every (query batch, subset batch) pair once:
            `ceil(M_train / K) * ceil(Q_train / B)` steps.
        subsets_per_step: subsets ranked against each other per step (K; batches are near-equal splits).
        queries_per_step: label queries per step (B).
        members_per_step: if set, each step embeds only a random sample of this many of the subsets'
            members (cheaper for large encoders; f is then taken over `S ∩ sample`).
        holdout_subsets: fraction of subsets held out for early stopping (0 = none, no early stopping).
        holdout_queries: fraction of label queries held out for early stopping.
        patience: epochs without a better held-out group LDS before stopping.
        warmup_steps: linear learning-rate warm-up steps.
        grad_clip: gradient-norm clip (0 = off).
        min_weight, max_weight: clip range of the pair weight `|r_i - r_j|`.
        logit_scale: learn the loss's logit scale gamma (see module docstring); False = gamma = 1.
        seed: encoder initialisation, held-out split and batch order.
    """

    lr: float = 3e-4
    weight_decay: float = 0.01
    epochs: int = 30
    subsets_per_step: int = 64
    queries_per_step: int = 200
    members_per_step: int | None = None
    holdout_subsets: float = 0.2
    holdout_queries: float = 0.2
    patience: int = 8
    warmup_steps: int = 10
    grad_clip: float = 1.0
    min_weight: float = 0.1
    max_weight: float = 5.0
    logit_scale: bool = True
    seed: int = 0
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.weight_decay < 0:
            raise ConfigError(f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}.")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or self.max_steps < 1):
            raise ConfigError(f"max_steps must be None or >= 1, got {self.max_steps!r}.")
        if min(self.epochs, self.subsets_per_step, self.queries_per_step, self.patience) < 1:
            raise ConfigError("epochs, subsets_per_step, queries_per_step and patience must be >= 1.")
        if self.subsets_per_step < 2:
            raise ConfigError("subsets_per_step must be >= 2 (the loss ranks pairs of subsets).")
        if self.members_per_step is not None and self.members_per_step < 1:
            raise ConfigError(f"members_per_step must be None or >= 1, got {self.members_per_step}.")
        for name in ("holdout_subsets", "holdout_queries"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        if not 0 <= self.min_weight <= self.max_weight or self.grad_clip < 0 or self.warmup_steps < 0:
            raise ConfigError("need 0 <= min_weight <= max_weight, grad_clip >= 0 and warmup_steps >= 0.")

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["max_steps"] is None:
            del d["max_steps"]
        return d


@dataclass
class TrainedEncoder:
    """The trained encoder (best held-out epoch) and its record.

    Attributes:
        encoder: the AirRepEncoder in eval mode.
        history: per epoch {"epoch", "train_loss", "heldout_lds", "heldout_loss", "seconds"}; the first
            entry (epoch -1) measures the initial encoder.
        best_epoch: the epoch whose weights were kept (-1 = the initial weights, when no epoch beat them).
        seconds: wall seconds of training (summed over resumed sessions).
        key: artifact key of the "airrep_encoder".
    """

    encoder: AirRepEncoder
    history: list[dict]
    best_epoch: int
    seconds: float
    key: str


def pairwise_ranking_loss(
    f: torch.Tensor, r: torch.Tensor, min_weight: float = 0.1, max_weight: float = 5.0
) -> torch.Tensor:
    """AirRep's weighted pairwise ranking loss.

    Args:
        f: `[B, K]` predicted group scores (larger = more helpful).
        r: `[B, K]` labels (larger = the subset lowered the query loss more).
        min_weight, max_weight: clip range of `w_ij = |r_i - r_j|`.

    Returns:
        Scalar: mean over pairs (b, i, j) with `r[b, i] > r[b, j]` of
        `w_ij * BCEWithLogits(f[b, i] - f[b, j], 1)` (0 when there is no such pair). A pair ordered
        like its labels (`f_i > f_j`) costs less than the same pair reversed.
    """
    diff_r = r[:, :, None] - r[:, None, :]
    pairs = diff_r > 0
    if not bool(pairs.any()):
        return f.sum() * 0.0
    diff_f = (f[:, :, None] - f[:, None, :])[pairs]
    weight = diff_r[pairs].abs().clamp(min_weight, max_weight)
    return F.binary_cross_entropy_with_logits(diff_f, torch.ones_like(diff_f), weight=weight)


def holdout_split(n: int, fraction: float, seed: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """`(train, heldout)` index arrays: a seeded `round(fraction * n)` held out (at least 2 if > 0)."""
    order = np.random.default_rng([seed, salt]).permutation(n)
    k = 0 if fraction == 0 else min(n - 2, max(2, round(fraction * n)))
    return np.sort(order[k:]), np.sort(order[:k])


def encoder_config_key(
    data: AirRepData, encoder: EncoderConfig, rank: RankTrainConfig, pooling: str, inputs: dict | None = None
) -> dict:
    """The config dict that keys the "airrep_encoder" and "airrep_ckpt" artifacts (`inputs`: what made the
    encoder's inputs when they are not the raw examples, e.g. the run whose features they are)."""
    key = {"data": data.key, "encoder": encoder.to_dict(), "rank": rank.to_dict(), "pooling": pooling}
    if inputs is not None:
        key["inputs"] = inputs
    return key


def _trainable_state(encoder: AirRepEncoder) -> dict[str, torch.Tensor]:
    state = {n: p.detach().cpu().clone() for n, p in encoder.named_parameters() if p.requires_grad}
    state.update({n: b.detach().cpu().clone() for n, b in encoder.named_buffers()})
    return state


def _flat_optimizer(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW per-parameter state as flat named tensors (param groups are rebuilt from the config)."""
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for name, value in st.items():
            out[f"{i}.{name}"] = torch.as_tensor(value)
    return out


def _load_optimizer(opt: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for k, v in flat.items():
        i, name = k.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


@dataclass(frozen=True)
class _RankProblem:
    """What one encoder training ranks: prepared `(inputs, labels)` of the training set (`xt`) and label
    queries (`xq`), subset masks bool `[M, N]`, labels `[n_query, M]`, the pooling and the settings."""

    xt: tuple[torch.Tensor, torch.Tensor]
    xq: tuple[torch.Tensor, torch.Tensor]
    masks: torch.Tensor
    labels: torch.Tensor
    pooling: str
    cfg: RankTrainConfig

    def heldout_metrics(
        self, encoder: AirRepEncoder, qs: torch.Tensor, subs: torch.Tensor
    ) -> tuple[float, float]:
        """`(group LDS, ranking loss)` of `f(x_q, S_j)` against the labels, queries `qs`, subsets `subs`."""
        cfg = self.cfg
        q = (self.xq[0][qs], self.xq[1][qs])
        f = group_scores(encoder.embed(q), encoder.embed(self.xt), self.masks[subs], self.pooling)
        labels = self.labels[qs][:, subs]
        rho = spearman_rows(f.double().numpy(), labels.double().numpy())
        rho = rho[np.isfinite(rho)]
        gamma = float(encoder.log_logit_scale.detach().exp()) if cfg.logit_scale else 1.0
        f, labels = f * gamma, labels.float()
        # query by query in blocks: all pairs of thousands of held-out subsets would take [B, K, K] at once
        rows = max(1, _PAIR_BLOCK // max(1, f.shape[1] ** 2))
        total, count = 0.0, 0
        for a in range(0, len(f), rows):
            n = int(((labels[a : a + rows, :, None] - labels[a : a + rows, None, :]) > 0).sum())
            if n:
                part = pairwise_ranking_loss(
                    f[a : a + rows], labels[a : a + rows], cfg.min_weight, cfg.max_weight
                )
                total, count = total + float(part) * n, count + n
        loss = total / count if count else 0.0
        return (float(rho.mean()) if rho.size else float("nan")), loss

    def step_loss(
        self, encoder: AirRepEncoder, qs: torch.Tensor, subs: torch.Tensor, rng: np.random.Generator
    ) -> torch.Tensor:
        """Ranking loss of one step over queries `qs` and subsets `subs` (with gradients)."""
        cfg, masks = self.cfg, self.masks[subs]
        members = masks.any(0).nonzero().flatten()
        if cfg.members_per_step is not None and len(members) > cfg.members_per_step:
            members = members[
                torch.from_numpy(np.sort(rng.choice(len(members), cfg.members_per_step, replace=False)))
            ]
        device = next(encoder.parameters()).device
        t_emb = encoder(self.xt[0][members].to(device), self.xt[1][members])
        q_emb = encoder(self.xq[0][qs].to(device), self.xq[1][qs])
        f = pool(q_emb @ t_emb.T, masks[:, members], self.pooling)  # float64 [B, K]
        if cfg.logit_scale:
            f = f * encoder.log_logit_scale.exp()
        labels = self.labels[qs][:, subs].to(f)
        return pairwise_ranking_loss(f, labels, cfg.min_weight, cfg.max_weight).float()

    @torch.no_grad()
    def init_logit_scale(self, encoder: AirRepEncoder, qs: torch.Tensor, subs: torch.Tensor) -> None:
        """Set `log gamma = -log std(f_i - f_j)` over the pairs of one batch (queries `qs`, subsets `subs`)."""
        q = (self.xq[0][qs], self.xq[1][qs])
        f = group_scores(encoder.embed(q), encoder.embed(self.xt), self.masks[subs], self.pooling).double()
        diff = (f[:, :, None] - f[:, None, :]).flatten()
        std = float(diff.std()) if diff.numel() > 1 else 0.0
        encoder.log_logit_scale.fill_(-math.log(std) if std > 0 and math.isfinite(std) else 0.0)


def train_encoder(
    data: AirRepData,
    train: ExampleSet,
    queries: ExampleSet,
    encoder_config: EncoderConfig | None = None,
    config: RankTrainConfig | None = None,
    pooling: str = "attention",
    workspace: Workspace | None = None,
    progress: Progress | None = None,
    inputs_key: dict | None = None,
) -> TrainedEncoder:
    """Train (or load) the AirRep encoder on `data`; see the module docstring.

    Args:
        data: the training data (masks over `train`, labels for `queries`).
        train: the training set the masks index (ids must match `data.train_ids`).
        queries: the label queries (ids must match `data.query_ids`).
        encoder_config: encoder shape (default `EncoderConfig()`).
        config: training settings (default `RankTrainConfig()`).
        pooling: "attention" (AirRep) or "sum" (ablation): the f used in the loss.
        workspace: where checkpoints and the final encoder are cached (required).
        progress: `progress(done, total, msg)` over the optimisation steps.
        inputs_key: what made `train`'s / `queries`' inputs when they are derived features (joins the key).

    Returns:
        TrainedEncoder with the best held-out epoch's weights.
    """
    encoder_config = encoder_config or EncoderConfig()
    cfg = config or RankTrainConfig()
    ws = require_workspace(workspace, "train_encoder")
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    if tuple(train.ids) != data.train_ids or tuple(queries.ids) != data.query_ids:
        raise ConfigError("the training set / label queries do not match the AirRep data they were made for.")
    key_cfg = encoder_config_key(data, encoder_config, cfg, pooling, inputs_key)
    encoder = build_encoder(encoder_config, train, cfg.seed)

    def fit() -> tuple[dict[str, torch.Tensor], dict]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return _fit(data, train, queries, encoder, cfg, pooling, ws, key_cfg, progress)

    def load(path: Path, meta: dict) -> TrainedEncoder:
        extra = meta["extra"]
        encoder.load_state_dict(load_tensors(path / "encoder.pt"), strict=False)
        return TrainedEncoder(
            encoder.eval(), extra["history"], extra["best_epoch"], extra["seconds"], path.name
        )

    return ws.cached(
        ENCODER_KIND,
        key_cfg,
        fit,
        save=lambda d, fitted: save_tensors(d, "encoder", fitted[0]),
        load=load,
        extra=lambda fitted: fitted[1],
    )


def _fit(
    data: AirRepData,
    train: ExampleSet,
    queries: ExampleSet,
    encoder: AirRepEncoder,
    cfg: RankTrainConfig,
    pooling: str,
    ws: Workspace,
    key_cfg: dict,
    progress: Progress | None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Train `encoder` (resuming from its "airrep_ckpt"); `(best weights, record)` for "airrep_encoder"."""
    started = time.perf_counter()
    problem = _RankProblem(
        encoder.prepare(train),
        encoder.prepare(queries),
        torch.from_numpy(data.masks),
        torch.from_numpy(data.labels),
        pooling,
        cfg,
    )
    masks = problem.masks
    sub_tr, sub_ho = holdout_split(len(masks), cfg.holdout_subsets, cfg.seed, 1)
    q_tr, q_ho = holdout_split(len(queries), cfg.holdout_queries, cfg.seed, 2)
    params = [p for p in encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    k, b = min(cfg.subsets_per_step, len(sub_tr)), min(cfg.queries_per_step, len(q_tr))
    n_sb, n_qb = math.ceil(len(sub_tr) / k), math.ceil(len(q_tr) / b)
    steps_per_epoch = n_sb * n_qb
    total = steps_per_epoch * cfg.epochs
    max_steps = total if cfg.max_steps is None else min(total, cfg.max_steps)
    held = len(sub_ho) >= 2 and len(q_ho) >= 1

    def evaluate() -> tuple[float, float]:
        if not held:
            return float("nan"), float("nan")
        return problem.heldout_metrics(encoder, torch.from_numpy(q_ho), torch.from_numpy(sub_ho))

    epoch, step, seconds = 0, 0, 0.0
    best_state, best_epoch = _trainable_state(encoder), -1
    init_lds, init_loss = evaluate()
    best_metric = init_lds if held else -math.inf
    history = [
        {"epoch": -1, "train_loss": None, "heldout_lds": init_lds, "heldout_loss": init_loss, "seconds": 0.0}
    ]
    if cfg.logit_scale:  # gamma = 1 / std of the initial pair differences (overwritten on resume)
        problem.init_logit_scale(encoder, torch.from_numpy(q_tr[:b]), torch.from_numpy(sub_tr[:k]))
    if ws.exists(CKPT_KIND, key_cfg):  # resume after the last finished epoch
        path = ws.open(CKPT_KIND, key_cfg)
        extra = ws.meta(CKPT_KIND, path.name)["extra"]
        encoder.load_state_dict(load_tensors(path / "encoder.pt"), strict=False)
        best_state = load_tensors(path / "best.pt")
        _load_optimizer(opt, load_tensors(path / "optimizer.pt"))
        epoch, step, history = extra["epoch"], extra["step"], extra["history"]
        best_epoch, best_metric, seconds = extra["best_epoch"], extra["best_metric"], extra["seconds"]
        if progress is not None:
            progress(step, max_steps, f"AirRep encoder: resumed after epoch {epoch}")
    bad = epoch - 1 - best_epoch  # finished epochs since the best one
    while epoch < cfg.epochs and step < max_steps and (not held or bad < cfg.patience):
        rng = np.random.default_rng([cfg.seed, 3, epoch])
        sub_batches = np.array_split(rng.permutation(sub_tr), n_sb)
        q_batches = np.array_split(rng.permutation(q_tr), n_qb)
        pairs = rng.permutation(steps_per_epoch)
        losses = []
        encoder.train()
        for i in pairs[: max_steps - step]:
            sub, qs = torch.from_numpy(sub_batches[i // n_qb]), torch.from_numpy(q_batches[i % n_qb])
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
            for group in opt.param_groups:
                group["lr"] = lr
            loss = problem.step_loss(encoder, qs, sub, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step, max_steps, f"AirRep encoder: epoch {epoch + 1}, loss {losses[-1]:.4f}")
        lds, held_loss = evaluate()
        epoch += 1
        if not held or lds > best_metric:
            best_state, best_epoch, best_metric, bad = _trainable_state(encoder), epoch - 1, lds, 0
        else:
            bad += 1
        seconds_now = seconds + time.perf_counter() - started
        history.append(
            {
                "epoch": epoch - 1,
                "train_loss": float(np.mean(losses)),
                "heldout_lds": lds,
                "heldout_loss": held_loss,
                "seconds": seconds_now,
            }
        )
        extra = {
            "epoch": epoch,
            "step": step,
            "history": history,
            "best_epoch": best_epoch,
            "best_metric": best_metric if math.isfinite(best_metric) else None,
            "seconds": seconds_now,
        }
        with ws.write(CKPT_KIND, key_cfg, extra=extra) as d:
            save_tensors(d, "encoder", _trainable_state(encoder))
            save_tensors(d, "best", best_state)
            save_tensors(d, "optimizer", _flat_optimizer(opt))
    seconds += time.perf_counter() - started
    extra = {
        "history": history,
        "best_epoch": best_epoch,
        "seconds": seconds,
        "steps": step,
        "loadavg": list(os.getloadavg()),
    }
    return best_state, extra


register_kind(
    ArtifactKind(
        ENCODER_KIND,
        files=("encoder.pt",),
        recompute="train the AirRep encoder again (fit airrep; it resumes)",
    )
)
register_kind(
    ArtifactKind(
        CKPT_KIND,
        files=("encoder.pt", "best.pt", "optimizer.pt"),
        recompute="train the AirRep encoder again (from its last finished epoch's checkpoint, if any)",
    )
)
