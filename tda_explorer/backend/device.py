"""The one place that decides the compute device and dtype.

CUDA when available (unless `TDA_DEVICE` says otherwise), else CPU. Every
tensor the backend creates goes through `get_device()` / `get_dtype()`.
"""

from __future__ import annotations

import os

import torch

from tda_explorer.errors import ConfigError


def get_device() -> torch.device:
    """Return the compute device: `$TDA_DEVICE` if set, else cuda when present, else cpu."""
    wanted = os.environ.get("TDA_DEVICE", "").strip().lower()
    if wanted:
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"TDA_DEVICE={wanted!r} but CUDA is not available on this machine; "
                "unset TDA_DEVICE or set it to 'cpu'."
            )
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def get_dtype() -> torch.dtype:
    """Return the default floating dtype for attribution math (float32; `$TDA_DTYPE=float64` for references)."""
    name = os.environ.get("TDA_DTYPE", "float32").strip().lower()
    table = {"float32": torch.float32, "float64": torch.float64}
    if name not in table:
        raise ConfigError(f"TDA_DTYPE={name!r} is not one of {sorted(table)}.")
    return table[name]
