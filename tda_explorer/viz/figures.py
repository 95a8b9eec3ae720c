"""Plotly figures for the app. Every point carries its example id in `custom_data[0]`, so a chart
selection maps to ids (see `tda_explorer.selection.ids_from_selection`), never to trace indices."""

from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from tda_explorer.data.example_set import ExampleSet
from tda_explorer.viz.render import example_image

PALETTE = [
    "#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2",
    "#eeca3b", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac",
]  # fmt: skip


def thumbnail_data_url(examples: ExampleSet, index: int, size: int = 56) -> str:
    """A PNG data URL of image example `index` (for dataframe ImageColumns and hover)."""
    img = Image.fromarray(example_image(examples, index, size=size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def scatter_map(
    coords: np.ndarray,
    ids: list[str],
    color: np.ndarray,
    color_name: str,
    hover: list[str] | None = None,
    categorical: bool = True,
    flagged: np.ndarray | None = None,
) -> go.Figure:
    """2-D map (e.g. UMAP) of examples: `coords [n, 2]`, coloured by a category or a number.

    Flagged examples are drawn again as black-ringed markers on top.
    """
    hover = hover or ids
    fig = go.Figure()
    custom = np.array(ids, dtype=object)[:, None]
    if categorical:
        for j, value in enumerate(sorted(set(color.tolist()), key=str)):
            m = color == value
            fig.add_trace(
                go.Scattergl(
                    x=coords[m, 0],
                    y=coords[m, 1],
                    mode="markers",
                    name=str(value),
                    marker={"size": 5, "color": PALETTE[j % len(PALETTE)]},
                    customdata=custom[m],
                    hovertext=np.array(hover, dtype=object)[m],
                    hoverinfo="text",
                )
            )
    else:
        fig.add_trace(
            go.Scattergl(
                x=coords[:, 0],
                y=coords[:, 1],
                mode="markers",
                name=color_name,
                marker={
                    "size": 5,
                    "color": color,
                    "colorscale": "Viridis",
                    "colorbar": {"title": color_name},
                },
                customdata=custom,
                hovertext=hover,
                hoverinfo="text",
            )
        )
    if flagged is not None and flagged.any():
        fig.add_trace(
            go.Scattergl(
                x=coords[flagged, 0],
                y=coords[flagged, 1],
                mode="markers",
                name="flagged",
                marker={"size": 9, "color": "rgba(0,0,0,0)", "line": {"width": 1.5, "color": "black"}},
                customdata=custom[flagged],
                hovertext=np.array(hover, dtype=object)[flagged],
                hoverinfo="text",
            )
        )
    fig.update_layout(
        dragmode="lasso",
        height=560,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend={"title": color_name},
        xaxis={"visible": False},
        yaxis={"visible": False},
    )
    return fig


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, auc: float, name: str) -> go.Figure:
    """ROC curve of a mislabel score against the known flips, with the chance diagonal."""
    fig = go.Figure(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{name} (AUC {auc:.3f})"))
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dot", "color": "gray"})
    )
    fig.update_layout(xaxis_title="false positive rate", yaxis_title="true positive rate", height=380)
    return fig


def curve_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], x_title: str, y_title: str) -> go.Figure:
    """Line chart of named (x, y) curves, e.g. pruning curves (accuracy vs fraction removed)."""
    fig = go.Figure()
    for name, (x, y) in curves.items():
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name))
    fig.update_layout(xaxis_title=x_title, yaxis_title=y_title, height=380)
    return fig


def shared_bins(samples: dict[str, np.ndarray], max_bins: int = 30) -> dict[str, float]:
    """Plotly `xbins` (start, end, size) shared by all samples, from the data: numpy's "auto" rule over the
    pooled values, at least 4 and at most `max_bins` bins; a zero range gets a small symmetric width."""
    pooled = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in samples.values()])
    pooled = pooled[np.isfinite(pooled)]
    if pooled.size == 0:
        return {"start": 0.0, "end": 1.0, "size": 0.25}
    lo, hi = float(pooled.min()), float(pooled.max())
    if hi - lo <= 1e-12 * max(1.0, abs(lo)):
        pad = max(abs(lo) * 1e-3, 1e-12)
        lo, hi = lo - pad, hi + pad
    n = int(np.clip(len(np.histogram_bin_edges(pooled, bins="auto")) - 1, 4, max_bins))
    size = (hi - lo) / n
    return {"start": lo - size / 2, "end": hi + size / 2, "size": size}


def histogram_figure(samples: dict[str, np.ndarray], x_title: str, nbins: int | None = None) -> go.Figure:
    """Overlaid histograms of named samples (e.g. a measurement across seeds with / without an example) on
    bins shared by all samples and chosen from the data (`shared_bins`; `nbins` forces a count), each seed's
    value also drawn as a tick below the axis (readable at 3 seeds as at 50); numbers in scientific notation."""
    xbins = shared_bins(samples)
    if nbins:
        xbins["size"] = (xbins["end"] - xbins["start"]) / nbins
    fig = go.Figure()
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
    for j, (name, values) in enumerate(samples.items()):
        values = np.asarray(values, dtype=np.float64)
        color = colors[j % len(colors)]
        fig.add_trace(
            go.Histogram(x=values, name=name, opacity=0.55, xbins=xbins, marker_color=color, autobinx=False)
        )
        fig.add_trace(
            go.Scatter(
                x=values, y=np.full(len(values), -0.06 - 0.06 * j), mode="markers", yaxis="y2",
                marker={"symbol": "line-ns-open", "size": 14, "color": color}, showlegend=False,
                hovertemplate="%{x:.4e}<extra>" + name.replace("<", "&lt;") + "</extra>",
            )
        )  # fmt: skip
    fig.update_layout(
        barmode="overlay",
        xaxis={"title": x_title, "exponentformat": "e", "tickformat": ".3~g"},
        yaxis={"title": "seeds", "domain": [0.18, 1.0], "rangemode": "tozero"},
        yaxis2={"domain": [0.0, 0.12], "visible": False, "range": [-0.3, 0.0]},
        height=380,
        legend={"orientation": "h", "y": 1.1},
    )
    return fig


def violin_figure(samples: dict[str, np.ndarray], y_title: str) -> go.Figure:
    """One violin per named sample (e.g. each top training example's score across seeds)."""
    fig = go.Figure()
    for name, values in samples.items():
        fig.add_trace(go.Violin(y=np.asarray(values), name=name, box_visible=True, points="all"))
    fig.update_layout(yaxis_title=y_title, height=360, showlegend=False)
    return fig


def bar_with_interval(
    names: list[str], values: np.ndarray, low: np.ndarray, high: np.ndarray, title: str
) -> go.Figure:
    """Bars with asymmetric error bars (e.g. LDS with its bootstrap 95% interval)."""
    values, low, high = map(np.asarray, (values, low, high))
    fig = go.Figure(
        go.Bar(
            x=names,
            y=values,
            error_y={"type": "data", "symmetric": False, "array": high - values, "arrayminus": values - low},
        )
    )
    fig.update_layout(yaxis_title=title, height=360)
    return fig


def pruning_figure(
    fractions: np.ndarray,
    method_acc: np.ndarray,
    random_acc: np.ndarray,
    method_name: str,
    chosen_fraction: float | None = None,
) -> go.Figure:
    """Test accuracy vs fraction of the training set removed: by attribution (least useful first) and at
    random, each the mean over retraining seeds with ±1 std error bars.

    Args:
        fractions: removed fractions `[K]`.
        method_acc, random_acc: accuracies `[K, R]` (R retraining seeds).
        method_name: legend name of the attribution curve.
        chosen_fraction: draw a dotted vertical line there (the fraction picked on the page), if given.
    """
    x = np.asarray(fractions, dtype=np.float64)
    fig = go.Figure()
    for name, acc, color in ((method_name, method_acc, PALETTE[0]), ("random removal", random_acc, "gray")):
        acc = np.asarray(acc, dtype=np.float64).reshape(len(x), -1)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=acc.mean(1),
                error_y={"type": "data", "array": acc.std(1), "visible": acc.shape[1] > 1},
                mode="lines+markers",
                name=name,
                line={"color": color, "dash": "dash" if color == "gray" else "solid"},
            )
        )
    if chosen_fraction is not None:
        fig.add_vline(x=float(chosen_fraction), line={"dash": "dot", "color": PALETTE[3]})
    fig.update_layout(
        xaxis_title="fraction of the training set removed",
        yaxis_title="test accuracy after retraining",
        xaxis={"tickformat": ".0%"},
        height=380,
    )
    return fig
