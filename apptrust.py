"""Trust cues drawn next to the attributor pickers (Attribution, Pruning): an attributor's measured LDS on
the run, or a one-click quick check with its estimated time; and the best measured attributor.
Compute lives in `tda_explorer.evaluation.trust`; this module only draws and launches."""

from __future__ import annotations

import streamlit as st

import appkit
from tda_explorer.errors import TDAError
from tda_explorer.evaluation import trust
from tda_explorer.training import TrainedRun


def measures(run: TrainedRun) -> dict[str, trust.LDSMeasure]:
    """`{score_key: LDSMeasure}` of the run's test-score artifacts (unmeasured ones are first scored against
    a stored ground truth when there is one: a matmul, no retraining)."""
    return trust.measure_stored(run, appkit.dataset_of(run), appkit.workspace())


def lds_cue(run: TrainedRun, score_key: str | None, container, where: str) -> None:
    """Under a picker: `LDS 0.47 ± 0.03 (20 subsets)` for `score_key` (a test-score artifact), or a
    "Quick check (20 subsets, ~N s)" button that measures it and reruns the page. `where` keys the button."""
    if score_key is None:
        return
    m = measures(run).get(score_key)
    if m is not None:
        container.caption(
            f"{m.label()} on this run: how well the scores predict retraining (higher = better)"
        )
        return
    if run.train_config is None:
        container.caption("LDS not measured: this imported run has no training recipe to retrain with.")
        return
    est = trust.quick_check_seconds(run, trust.QUICK_SUBSETS)
    about = f", ~{est:.0f} s" if est is not None else ""
    pressed = container.button(
        f"Quick check ({trust.QUICK_SUBSETS} subsets{about})",
        key=f"quick_check_{where}_{score_key}",
        help="Measure how well this attributor's scores predict retraining on this run (LDS over "
        f"{trust.QUICK_SUBSETS} random half-subsets, one retraining each; the retrainings are cached and "
        "shared by every attributor and the Evaluation page).",
    )
    if pressed:
        # ---- compute launch (kept in one block: the background-job runner replaces these lines) ----
        bar = container.progress(0.0, text="LDS quick check: retraining on subsets…")
        try:
            trust.quick_check(
                run, appkit.dataset_of(run), score_key, appkit.workspace(), executor=appkit.app_executor(),
                progress=appkit.progress_callback(bar),
            )  # fmt: skip
        except TDAError as e:
            container.error(str(e))
            return
        st.rerun()


def suggest_best(run: TrainedRun, current: str | None, names: dict[str, str], state_key: str) -> None:
    """One line naming the best measured attributor among `names` (score key -> label), with a button that
    switches `st.session_state[state_key]` to it when it is not the current one."""
    ms = {k: m for k, m in measures(run).items() if k in names}
    if not ms:
        return
    best = max(ms.values(), key=lambda m: m.mean if m.mean == m.mean else float("-inf"))
    if best.mean != best.mean:  # NaN: nothing finite measured
        return
    text = f"Best measured on this run: **{names[best.score_key]}**, {best.label()}"
    if best.score_key == current:
        st.caption(text + " (shown)")
        return
    c1, c2 = st.columns([4, 1])
    c1.caption(text)

    def switch() -> None:
        st.session_state[state_key] = best.score_key

    c2.button("Switch to it", key=f"switch_best_{state_key}", on_click=switch)
