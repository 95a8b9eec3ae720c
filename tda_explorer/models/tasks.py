"""Tasks: what a model's outputs mean — the per-example training loss and the query measurements.

A task is named by a string and carried by the model (`model.task`, "classification" unless set; an
imported model gets the task given to `import_run`), so every gradient, curvature and training loop
asks `task_of(model)` instead of assuming cross-entropy.

- "classification": outputs are logits `[n, C]`, targets int64 class indices `[n]`;
  loss = cross-entropy (nats); measurements "loss", "margin" = `log p_y / (1 - p_y)` (TRAK's), "prob" = `p_y`.
- "regression": outputs `[n, 1]` (or `[n, d]`), targets float `[n]` (or `[n, d]`);
  loss = `1/2 ||f - y||^2` (half the squared error, so its gradient is the residual times `df`: a
  `weight_decay` declared at import is relative to this loss); measurements "loss" and "margin" = the
  output `f` itself (TRAK's output function for regression, one output only); "prob" is undefined.

The `Task` protocol below is what a further task provides; `TASK_OBJECTIVES` maps each task to its
per-example objectives and `batch_loss` gives the summed or per-example loss of a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

from tda_explorer.errors import ConfigError

TASKS: tuple[str, ...] = ("classification", "regression")


class Task(Protocol):
    """What a task defines (per example: `outputs [C]`, `target` a scalar or `[d]`)."""

    name: str

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-example training loss `[n]` for outputs `[n, C]` and targets `[n]` (or `[n, d]`)."""
        ...

    def objective(self, name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The per-example measurement `name` ("loss", "margin", ...) as `fn(outputs [C], target) -> scalar`."""
        ...


def task_of(model: torch.nn.Module) -> str:
    """The task a model was built for ("classification" unless the model says otherwise)."""
    return getattr(model, "task", "classification")


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {TASKS}.")
    return task


# ---------------------------------------------------------------------------- classification
def example_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of one example: logits `[C]`, label scalar -> scalar (nats)."""
    return F.cross_entropy(logits.unsqueeze(0), label.unsqueeze(0))


def example_margin(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """TRAK margin of one example, `log p_y / (1 - p_y) = z_y - logsumexp_{c != y} z_c` (scalar)."""
    is_label = torch.arange(logits.shape[-1], device=logits.device) == label
    others = logits.masked_fill(is_label, float("-inf"))
    return logits.gather(-1, label.view(1)).squeeze(0) - torch.logsumexp(others, dim=-1)


def example_prob(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Probability of class `label` for one example, `softmax(logits)[label]` (scalar; d-TDA measurement)."""
    return torch.softmax(logits, dim=-1).gather(-1, label.view(1)).squeeze(0)


# ---------------------------------------------------------------------------- regression
def example_half_squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`1/2 ||f - y||^2` of one example: output `[d]`, target scalar or `[d]` -> scalar."""
    return 0.5 * (output - target.to(output.dtype).reshape(output.shape)).square().sum()


def example_output(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The (single) output `f` of one example (TRAK's output function for regression); target unused."""
    if output.numel() != 1:
        raise ConfigError(
            f"the regression measurement 'margin' needs one output per example, got {output.numel()}."
        )
    return output.reshape(())


TASK_OBJECTIVES: dict[str, dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "classification": {"loss": example_loss, "margin": example_margin, "prob": example_prob},
    "regression": {"loss": example_half_squared_error, "margin": example_output},
}


def objective_fn(task: str, objective: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-example objective `objective` of `task`; ConfigError naming the ones it has."""
    table = TASK_OBJECTIVES[check_task(task)]
    if objective not in table:
        raise ConfigError(
            f"objective {objective!r} is not defined for {task}; choose one of {sorted(table)}."
        )
    return table[objective]


def batch_loss(task: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example training losses `[n]` of a batch (outputs `[n, C]`)."""
    if check_task(task) == "classification":
        return F.cross_entropy(outputs, targets, reduction="none")
    return 0.5 * (outputs - targets.to(outputs.dtype).reshape(outputs.shape)).square().flatten(1).sum(1)


def sample_fisher_targets(task: str, outputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Targets drawn from the model's predictive distribution (true Fisher): a class from softmax, or
    `f + N(0, 1)` for regression (whose Fisher is then `J^T J`)."""
    if check_task(task) == "classification":
        probs = torch.softmax(outputs.detach().double(), dim=-1).cpu()
        return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(outputs.device)
    noise = torch.randn(outputs.shape, generator=generator, dtype=torch.float64)
    return (outputs.detach().double().cpu() + noise).to(outputs.device, outputs.dtype)
