"""The pruning figure: attribution and random curves, seed means with spread, the chosen fraction marked."""

from __future__ import annotations

import numpy as np

from tda_explorer.viz.figures import pruning_figure


def test_pruning_figure_plots_means_over_seeds_with_std():
    fractions = np.array([0.0, 0.1, 0.2])
    method = np.array([[0.9, 0.8], [0.95, 0.85], [0.7, 0.7]])
    random = np.array([[0.9, 0.8], [0.8, 0.8], [0.6, 0.8]])
    fig = pruning_figure(fractions, method, random, "trak", chosen_fraction=0.1)
    a, b = fig.data
    assert a.name == "trak" and b.name == "random removal"
    np.testing.assert_allclose(a.y, [0.85, 0.9, 0.7])
    np.testing.assert_allclose(b.error_y.array, [0.05, 0.0, 0.1])
    np.testing.assert_allclose(a.x, fractions)
    assert [s.x0 for s in fig.layout.shapes] == [0.1]
    assert "accuracy" in fig.layout.yaxis.title.text


def test_pruning_figure_hides_error_bars_for_one_seed():
    fig = pruning_figure([0.0, 0.5], np.array([[0.9], [0.8]]), np.array([[0.9], [0.85]]), "grad_dot")
    assert not fig.data[0].error_y.visible and not fig.layout.shapes
