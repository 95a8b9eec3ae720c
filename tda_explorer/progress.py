"""The progress callback every long step takes (the core never draws a bar itself), and cooperative cancel.

A caller that may want to stop a long step runs it inside `cancel_scope(flag)` (a `threading.Event` the
caller sets to ask for a stop). The core checks the flag wherever it reports progress (`cancellable`
wraps the caller's callback) and between jobs and training epochs (`check_cancelled`), and raises
`Cancelled` there: what was already stored (trained seeds, finished shards) stays in the workspace, so
asking again resumes. The scope is a context variable: it holds in the thread (and context) that
entered it, which is where in-process jobs run; pool workers never see it (the parent stops waiting).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator

from tda_explorer.errors import Cancelled

Progress = Callable[[int, int, str], None]
"""Progress callback: `(done, total, message)`; the CLI maps it to tqdm, the app to st.progress."""

_CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("tda_cancel", default=None)


@contextlib.contextmanager
def cancel_scope(flag: threading.Event) -> Iterator[threading.Event]:
    """Within the block (this thread / context), `check_cancelled()` raises `Cancelled` once `flag` is set."""
    token = _CANCEL.set(flag)
    try:
        yield flag
    finally:
        _CANCEL.reset(token)


def check_cancelled() -> None:
    """Raise `Cancelled` if the enclosing `cancel_scope`'s flag is set (a no-op outside any scope)."""
    flag = _CANCEL.get()
    if flag is not None and flag.is_set():
        raise Cancelled("cancelled; the parts already finished are kept in the workspace and will be reused.")


def cancellable(progress: Progress | None, flag: threading.Event | None = None) -> Progress:
    """`progress` with a cancel check before each report: raises `Cancelled` once `flag` (default: the
    enclosing `cancel_scope`'s) is set. Works with `progress=None` too (checks only)."""

    def update(done: int, total: int, msg: str) -> None:
        if flag is not None and flag.is_set():
            raise Cancelled(
                "cancelled; the parts already finished are kept in the workspace and will be reused."
            )
        check_cancelled()
        if progress is not None:
            progress(done, total, msg)

    return update
