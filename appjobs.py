"""Long steps of the app in the background: one thread per step, owned by the server (not the session), with
an estimate before anything long, a progress bar that says what it does and how long remains, and Cancel.

A page calls `run_step(key, label, work, estimate, requested)` on every run, where `work(progress)` calls
tda_explorer (the compute itself) and `requested` is whether the page's button was pressed in this run:

- a step estimated over `ASK_ABOVE_S` shows the estimate and asks Start / Cancel first;
- a started step runs in a server thread (`work` gets a progress callback that raises
  `tda_explorer.errors.Cancelled` once Cancel is pressed; what finished stays cached, so asking again
  resumes); the page waits on it with a progress bar and a Cancel button. The wait is interruptible: opening
  another page stops the wait, not the step;
- re-opening the page (any session) while the step runs shows its progress instead of starting it again;
- when the step ends during this session's wait, `run_step` returns its `Outcome` (result, error or
  cancelled; the message is already shown); otherwise None and the page reads the stored result.

Measured durations refresh the cost model (`tda_explorer.estimates.record_duration`).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from tda_explorer.errors import Cancelled, TDAError
from tda_explorer.estimates import ASK_ABOVE_S, Estimate, human_seconds, record_duration
from tda_explorer.progress import cancel_scope, cancellable
from tda_explorer.store import Workspace
from tda_explorer.training.executor import in_process

POLL_S = 0.5  # how often a waiting page redraws the bar
KEEP_S = 600.0  # a finished step stays reportable (to the sessions that waited for it) this long
WAIT_S: float | None = None  # a page waits at most this long per run (None = until the step ends; tests: 0)


@dataclass
class Job:
    """One background step: its state is written by the worker thread and read by the pages."""

    key: str
    label: str
    estimate: Estimate | None
    cancel: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.perf_counter)
    done: float = 0.0
    total: float = 1.0
    message: str = "starting…"
    status: str = "running"  # running | done | error | cancelled
    result: Any = None
    error: str = ""
    seconds: float = 0.0
    thread: threading.Thread | None = None

    def update(self, done: float, total: float, msg: str) -> None:
        self.done, self.total, self.message = float(done), float(max(total, 1)), msg

    @property
    def fraction(self) -> float:
        return min(1.0, max(0.0, self.done / self.total))

    def remaining(self) -> float | None:
        """Seconds left: at the rate so far once a part is done, else the estimate minus the time spent."""
        elapsed = time.perf_counter() - self.started
        f = self.fraction
        if 0 < f < 1 and elapsed > 2:
            return elapsed * (1 - f) / f
        if self.estimate is not None:
            return max(0.0, self.estimate.seconds - elapsed)
        return None

    def text(self) -> str:
        elapsed = time.perf_counter() - self.started
        left = self.remaining()
        tail = f", about {human_seconds(left)} left" if left is not None and self.status == "running" else ""
        state = " — cancelling…" if self.cancel.is_set() and self.status == "running" else ""
        return f"{self.label}: {self.message} ({human_seconds(elapsed)} so far{tail}){state}"


@dataclass
class Outcome:
    """How a step this session waited for ended: status "done" (with `result`), "error" or "cancelled"."""

    status: str
    result: Any = None
    error: str = ""
    seconds: float = 0.0


@st.cache_resource(show_spinner=False)
def _jobs() -> tuple[dict[str, Job], threading.Lock]:
    """The server's jobs by key (one registry per server process, shared by every session)."""
    return {}, threading.Lock()


def get(key: str) -> Job | None:
    """The job of `key` (running or finished) if this server has one."""
    jobs, lock = _jobs()
    with lock:
        return jobs.get(key)


def running() -> list[Job]:
    """The server's running jobs."""
    jobs, lock = _jobs()
    with lock:
        return [j for j in jobs.values() if j.status == "running"]


def start(key: str, label: str, work: Callable, estimate: Estimate | None, ws: Workspace | None) -> Job:
    """Start `work(progress)` in a server thread, unless a job of `key` already runs (then return that one)."""
    jobs, lock = _jobs()
    with lock:
        job = jobs.get(key)
        if job is not None and job.status == "running":
            return job
        now = time.perf_counter()
        for old in [
            k for k, j in jobs.items() if j.status != "running" and now - j.started - j.seconds > KEEP_S
        ]:
            del jobs[old]  # finished long ago: its result is in the workspace, don't hold it in memory
        job = jobs[key] = Job(key, label, estimate)

    def target() -> None:
        try:
            with cancel_scope(job.cancel), in_process():
                job.result = work(cancellable(job.update, job.cancel))
            job.seconds = time.perf_counter() - job.started
            job.status = "done"
            # a step that mostly reused cached parts says nothing about the cost of computing it
            if ws is not None and estimate is not None and job.seconds >= 0.25 * estimate.seconds:
                record_duration(ws, estimate.parts, job.seconds)
        except Cancelled as e:
            job.status, job.error = "cancelled", str(e)
        except TDAError as e:
            job.status, job.error = "error", str(e)
        except Exception as e:  # shown on the page instead of dying silently in a thread
            traceback.print_exc()
            job.status, job.error = "error", f"{type(e).__name__}: {e}"
        finally:
            job.seconds = job.seconds or time.perf_counter() - job.started

    job.thread = threading.Thread(target=target, name=f"tda-job {label}", daemon=True)
    job.thread.start()
    return job


def involved(key: str) -> bool:
    """Whether the step `key` needs `run_step` on this run although its button wasn't pressed: it runs (in
    any session), this session waits for its Start / Cancel answer, or it ended since this session looked."""
    job = get(key)
    return (
        (job is not None and job.status == "running")
        or key in st.session_state.get("_jobs_pending", set())
        or key in _watching()
    )


def _watching() -> set[str]:
    return st.session_state.setdefault("_jobs_watching", set())


def run_step(
    key: str,
    label: str,
    work: Callable,
    estimate: Estimate | None = None,
    requested: bool = False,
    ws: Workspace | None = None,
) -> Outcome | None:
    """Drive the step `key` from a page (see the module docstring); returns its Outcome when it ended
    while this session waited, else None."""
    pending = st.session_state.setdefault("_jobs_pending", set())
    job = get(key)
    if job is not None and job.status == "running":
        pending.discard(key)
        return _wait(job)
    if job is not None and key in _watching():  # it ended after this session last looked
        return _finish(job)
    if requested and not (estimate is not None and estimate.ask):
        return _wait(start(key, label, work, estimate, ws))
    if requested:
        pending.add(key)
    start_key, dismiss_key = f"_job_start_{key}", f"_job_dismiss_{key}"
    if key in pending and st.session_state.get(start_key):  # answered Start: no question drawn this time
        pending.discard(key)
        return _wait(start(key, label, work, estimate, ws))
    if key in pending and st.session_state.get(dismiss_key):
        pending.discard(key)
    if key in pending:
        box = st.container(border=True)
        box.warning(
            f"**{label}** is estimated at {estimate.describe() if estimate else 'an unknown time'}. "
            "It runs in the background: other pages stay usable, and you can cancel it (finished parts are kept)."
        )
        c1, c2 = box.columns(2)
        c1.button("Start", type="primary", key=start_key)  # read on the rerun its click makes (above)
        c2.button("Cancel", key=dismiss_key)
    return None


def resume(prefix: str, skip: str | None = None) -> list[Outcome]:
    """Steps whose key starts with `prefix` that run (any session) or that this session waited for and that
    ended since: shown (progress, or their end) whatever the page's form shows now (a form is reset when its
    page is left). `skip`: the key the page drives itself with `run_step`. Returns the Outcomes of those that
    ended during this page run."""
    jobs, lock = _jobs()
    with lock:
        keys = [
            k for k, j in jobs.items()
            if k.startswith(prefix) and k != skip and (j.status == "running" or k in _watching())
        ]  # fmt: skip
    out = []
    for key in keys:
        job = get(key)
        outcome = _wait(job) if job.status == "running" else _finish(job)
        if outcome is not None:
            out.append(outcome)
    return out


def _wait(job: Job) -> Outcome | None:
    """Show the job's progress and a Cancel button until it ends (or `WAIT_S`); the Outcome if it ended."""
    _watching().add(job.key)
    holder = st.empty()  # cleared when the step ends
    box = holder.container(border=True)
    if box.button("Cancel", key=f"_job_cancel_{job.key}", help="stops at the next progress step"):
        job.cancel.set()
    bar = box.progress(job.fraction, text=job.text())
    deadline = None if WAIT_S is None else time.perf_counter() + WAIT_S
    while job.status == "running" and (deadline is None or time.perf_counter() < deadline):
        if job.thread is not None:
            job.thread.join(POLL_S)  # returns at once when the step ends (a cached result: milliseconds)
        else:
            time.sleep(POLL_S)
        bar.progress(job.fraction, text=job.text())  # a click elsewhere interrupts the wait here, not the job
    if job.status == "running":
        return None
    holder.empty()
    return _finish(job)


def _finish(job: Job) -> Outcome:
    """Report a finished job to this session once (its message shown here) and forget it for the session."""
    _watching().discard(job.key)
    if job.status == "cancelled":
        st.info(
            f"{job.label}: cancelled after {human_seconds(job.seconds)}; the parts already finished are kept in "
            "the workspace and will be reused."
        )
    elif job.status == "error":
        st.error(f"{job.label}: {job.error}")
    return Outcome(job.status, job.result, job.error, job.seconds)


__all__ = ["ASK_ABOVE_S", "Job", "Outcome", "get", "involved", "resume", "run_step", "running", "start"]


# ---- the long steps of the pages, each as one call (the compute itself is tda_explorer's) ----
_MAPS_DONE: set[str] = set()  # representations whose first map this server made (numba compiled)


def map_step(run, data, representation: str, include_test: bool, ws: Workspace, airrep_settings=None):
    """The map page's UMAP: started on view (asked first only when estimated long), in the background.
    Returns the MapResult, or None while it runs / waits for an answer (the page stops there)."""
    from tda_explorer.estimates import estimate_map, load_calibration
    from tda_explorer.maps import LAYOUT, compute_map

    def work(progress):
        result = compute_map(run, data, representation, include_test, workspace=ws, progress=progress,
                             airrep_settings=airrep_settings)  # fmt: skip
        _MAPS_DONE.add("any")
        return result

    n = len(data.train) + (len(data.test) if include_test else 0)
    estimate = estimate_map(n, first_in_process=not _MAPS_DONE, cal=load_calibration(ws))
    stored = {"run": run.key, "representation": representation,  # compute_map's artifact config (defaults)
              **({"airrep": airrep_settings} if representation == "airrep" else {}),
              "include_test": bool(include_test), "n_neighbors": 15, "seed": 0, "layout": LAYOUT}  # fmt: skip
    if ws.exists("map", stored):  # reloaded, nothing to estimate or wait for
        return compute_map(
            run, data, representation, include_test, workspace=ws, airrep_settings=airrep_settings
        )
    key = f"map:{ws.root}:{run.key}:{representation}:{include_test}:{airrep_settings}"
    outcome = run_step(key, f"Map ({representation})", work, estimate, requested=True, ws=ws)
    return outcome.result if outcome is not None and outcome.status == "done" else None


def scores_step(run, data, method: str, settings: dict, split: str, ws: Workspace, requested: bool):
    """`method`'s scores of the `split` queries (e.g. the validation set for pruning) as a background step.
    Returns the ScoreResult when it finished during this page run, else None."""
    from tda_explorer.attributors.scores import compute_scores, list_scores
    from tda_explorer.estimates import estimate_attributor, full_settings, load_calibration, run_shape

    key = f"scores:{ws.root}:{run.key}:{method}:{split}:{sorted(settings.items())}"
    if not (requested or involved(key)):
        return None
    shape = run_shape(run, data, split)
    tuned = any(m["config"]["method"]["method"] in ("trak", "influence") for m in list_scores(ws, run.key))
    estimate = estimate_attributor(
        method, full_settings(method, settings), shape, load_calibration(ws), tuned
    )
    outcome = run_step(
        key, f"{method} scores ({split})",
        lambda progress: compute_scores(run, data, method, settings, split, ws, progress),
        estimate, requested=requested, ws=ws,
    )  # fmt: skip
    return outcome.result if outcome is not None and outcome.status == "done" else None


def pruning_curve_step(curve_args: tuple, source: str, ws: Workspace, requested: bool, executor=None):
    """The pruning curve (`compute_pruning_curve(*curve_args)`: retrainings without the pruned examples and at
    random) as a background step. Returns the curve when it finished during this page run, else None."""
    from tda_explorer.estimates import Shape, estimate_retrainings, load_calibration, training_shape
    from tda_explorer.evaluation import compute_pruning_curve

    _, train, test, model_config, train_config, fractions, seeds = curve_args
    key = f"pruning:{ws.root}:{source}:{list(fractions)}:{list(seeds)}"
    if not (requested or involved(key)):
        return None
    shape: Shape = training_shape(train, model_config, train_config, len(seeds))
    n = (2 * len(fractions) - 1) * len(seeds)
    keep = 1.0 - sum(fractions) / max(1, len(fractions))
    outcome = run_step(
        key, f"Pruning curve ({n} retrainings)",
        lambda progress: compute_pruning_curve(*curve_args, workspace=ws, executor=executor, progress=progress,
                                               source=source),
        estimate_retrainings(n, keep, shape, load_calibration(ws)), requested=requested, ws=ws,
    )  # fmt: skip
    return outcome.result if outcome is not None and outcome.status == "done" else None


def lds_truth_step(run, data, config, ws: Workspace, requested: bool, executor=None):
    """The LDS ground truth (`compute_lds_truth`: `config.n_subsets` x seeds retrainings on alpha of the
    training set) as a background step. Returns it when it finished during this page run, else None."""
    from tda_explorer.estimates import estimate_retrainings, load_calibration, training_shape
    from tda_explorer.evaluation import compute_lds_truth

    key = f"lds:{ws.root}:{run.key}:{config.n_subsets}:{config.alpha}:{list(config.seeds)}"
    if not (requested or involved(key)):
        return None
    shape = training_shape(data.train, run.model_config, run.train_config, 1)
    n = config.n_subsets * len(config.seeds)
    outcome = run_step(
        key, f"LDS ground truth ({n} retrainings)",
        lambda progress: compute_lds_truth(data.train, data.test, run.model_config, run.train_config, config, ws,
                                           executor, progress),
        estimate_retrainings(n, config.alpha, shape, load_calibration(ws)), requested=requested, ws=ws,
    )  # fmt: skip
    return outcome.result if outcome is not None and outcome.status == "done" else None


def oof_step(run, data, ws: Workspace, requested: bool, executor=None):
    """The run's out-of-fold probabilities (`cached_oof_probs`: REPEATS x N_FOLDS retrainings, for the combined
    mislabel score and cleanlab's) as a background step. Returns them when they finished during this page run,
    else None."""
    from tda_explorer.estimates import estimate_retrainings, load_calibration, training_shape
    from tda_explorer.evaluation.run_label_quality import N_FOLDS, REPEATS, cached_oof_probs

    key = f"oof:{ws.root}:{run.key}"
    if not (requested or involved(key)):
        return None
    shape = training_shape(data.train, run.model_config, run.train_config, 1)
    n = N_FOLDS * REPEATS
    outcome = run_step(
        key, f"Out-of-fold probabilities ({n} retrainings)",
        lambda progress: cached_oof_probs(run, data.train, ws, executor=executor, progress=progress),
        estimate_retrainings(n, 1.0 - 1.0 / N_FOLDS, shape, load_calibration(ws)), requested=requested, ws=ws,
    )  # fmt: skip
    return outcome.result if outcome is not None and outcome.status == "done" else None
