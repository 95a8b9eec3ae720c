"""Chart selections to example ids: the pure function behind the app's clickable charts.

Kept free of Streamlit and plotly objects so it is tested directly (AppTest cannot click charts). The
pruning choices live in `backend.usefulness`, rank agreement in `backend.stats`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def ids_from_selection(event: Mapping | None) -> list[str]:
    """Example ids of the points in a plotly selection event (as `st.plotly_chart(on_select=...)` returns).

    Every trace carries the example id as the first entry of `custom_data`, so the answer never depends
    on trace or point indices. Returns ids in selection order without duplicates; [] for no selection.
    """
    if not event:
        return []
    selection = event.get("selection", event) if isinstance(event, Mapping) else {}
    points = selection.get("points", []) if isinstance(selection, Mapping) else []
    out: list[str] = []
    for p in points:
        custom = p.get("customdata", p.get("custom_data"))
        if custom is None:
            continue
        example_id = custom[0] if isinstance(custom, Sequence) and not isinstance(custom, str) else custom
        if str(example_id) not in out:
            out.append(str(example_id))
    return out
