"""Models brought in from outside: a user's `nn.Module`, built by a zero-argument factory, as a TDAModel.

`ImportedModel` wraps the user's module as `body` (its parameters keep the user's names under the
`body.` prefix, in the user's order) and finds the *head*: the last `nn.Linear` whose output is the
model's logits. `features(x)` is the head's input (captured by a forward hook) and `head_prefix` names
the head's parameters, so the parameter subset "head", closed-form head Hessians, representation
similarity and maps work as for the zoo's models. A model whose logits are not the output of a final
`nn.Linear` still works with every method that differentiates `"all"` parameters; head-only methods
then say so.

Factories are found by name (`"package.module:function"`): `register_factory` records a callable
for this process (a script's or notebook's function), and any importable function is found by import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

from tda_explorer.errors import ConfigError
from tda_explorer.models.configs import ImportedConfig
from tda_explorer.models.networks import TDAModel

_FACTORIES: dict[str, Callable[[], nn.Module]] = {}


def factory_name(factory: Callable[[], nn.Module] | str) -> str:
    """The name a factory is recorded under: the string itself, or `"<module>:<qualname>"`."""
    if isinstance(factory, str):
        if ":" not in factory:
            raise ConfigError(
                f"model factory {factory!r} must be 'package.module:function' (e.g. 'mypkg.nets:build')."
            )
        return factory
    if not callable(factory):
        raise ConfigError(f"model_factory must be a callable or a 'module:function' string, got {factory!r}.")
    module = getattr(factory, "__module__", None) or "__unknown__"
    qualname = getattr(factory, "__qualname__", None) or type(factory).__qualname__
    return f"{module}:{qualname}"


def register_factory(factory: Callable[[], nn.Module], name: str | None = None) -> str:
    """Make `factory` findable by `name` (default `factory_name(factory)`) in this process; returns the name."""
    name = name or factory_name(factory)
    _FACTORIES[name] = factory
    return name


def importable(name: str) -> bool:
    """Whether a factory name can be found by import alone (e.g. in a fresh worker process)."""
    module, _, qualname = name.partition(":")
    if module in ("__main__", "__mp_main__", "__unknown__") or "<" in qualname:
        return False
    try:
        _import_attr(module, qualname)
    except ConfigError:
        return False
    return True


def _import_attr(module: str, qualname: str) -> Callable[[], nn.Module]:
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            f"model factory '{module}:{qualname}' cannot be found ({e}). Pass the factory again "
            "(load_run(key, model_factory=...) or tda_explorer.register_factory(fn)), or make it importable."
        ) from e
    if not callable(obj):
        raise ConfigError(f"model factory '{module}:{qualname}' is not callable.")
    return obj


def resolve_factory(name: str) -> Callable[[], nn.Module]:
    """The factory registered under `name`, else the importable function it names."""
    if name in _FACTORIES:
        return _FACTORIES[name]
    module, _, qualname = name.partition(":")
    if module in ("__main__", "__mp_main__") or "<" in qualname:
        raise ConfigError(
            f"model factory {name!r} was defined in a script or notebook and is not registered in this "
            "process: pass it again (load_run(key, model_factory=fn) or tda_explorer.register_factory(fn))."
        )
    return _import_attr(module, qualname)


def call_factory(factory: Callable[[], nn.Module], name: str) -> nn.Module:
    """`factory()`, checked to be an `nn.Module`."""
    try:
        module = factory()
    except TypeError as e:
        raise ConfigError(f"model factory {name!r} must take no arguments: {e}") from e
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model factory {name!r} returned {type(module).__name__}, not a torch nn.Module.")
    return module


def find_head(module: nn.Module, example: torch.Tensor) -> str | None:
    """Path of the last `nn.Linear` inside `module` whose output is the logits for `example`, else None."""
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda _m, _a, out, name=name: outputs.__setitem__(name, out))
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        with torch.no_grad():
            logits = module(example)
    finally:
        for h in handles:
            h.remove()
    found = [
        n
        for n, out in outputs.items()
        if out is logits or (out.shape == logits.shape and torch.equal(out, logits))
    ]
    return found[-1] if found else None


class ImportedModel(TDAModel):
    """A user's module as a TDAModel: `forward = body(x)`, `features = input of the head` (module docstring).

    Args:
        body: the user's module (maps a batch of inputs to logits `[B, C]`).
        head: path of its final `nn.Linear` inside `body` (see `find_head`), or None when there is none.
        task: what the outputs mean (`models.tasks`); gradients, curvature and training read `model.task`.
    """

    def __init__(self, body: nn.Module, head: str | None, task: str = "classification") -> None:
        super().__init__()
        self.body = body
        self.task = task
        self.head_path = head
        self.head_prefix = f"body.{head}." if head else None

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        if self.head_path is None:
            raise ConfigError(
                "this imported model's logits are not the output of a final nn.Linear, so head-only methods "
                "(params='head', repsim, representation maps) are unavailable; use params='all'."
            )
        return self.body.get_submodule(self.head_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `[B, C]` of the user's module."""
        return self.body(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input `[B, d]` (what the final Linear sees), flattened per example."""
        seen: dict[str, torch.Tensor] = {}
        handle = self.head.register_forward_pre_hook(lambda _m, args: seen.__setitem__("a", args[0]))
        try:
            self.body(x)
        finally:
            handle.remove()
        return seen["a"].reshape(len(x), -1)


def build_imported(cfg: ImportedConfig) -> ImportedModel:
    """A fresh model from the run's factory (its own init), wrapped (weights are loaded by the caller)."""
    body = call_factory(resolve_factory(cfg.factory), cfg.factory)
    return ImportedModel(body, cfg.head, cfg.task)
