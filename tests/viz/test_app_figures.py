"""d-TDA histograms on shared, data-driven bins; map hovers escape ids and class names."""

from __future__ import annotations

import numpy as np
import torch

from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.maps import map_hover
from tda_explorer.viz.figures import histogram_figure, shared_bins


def test_histograms_share_bins_chosen_from_the_data():
    for seeds in (3, 10, 50):
        rng = np.random.default_rng(seeds)
        x = rng.normal(1e-5, 1e-6, seeds)
        samples = {"with": x, "without": x + 2e-7}
        bins = shared_bins(samples)
        assert 4 <= (bins["end"] - bins["start"]) / bins["size"] <= 31
        assert bins["start"] < min(x) and bins["end"] > max(x) + 2e-7
        fig = histogram_figure(samples, "loss")
        hists = [t for t in fig.data if t.type == "histogram"]
        assert len(hists) == 2 and hists[0].xbins.size == hists[1].xbins.size == bins["size"]
        assert fig.layout.xaxis.exponentformat == "e"
    same = shared_bins({"a": np.ones(3), "b": np.ones(3)})  # zero range: still a usable width
    assert same["size"] > 0


def test_map_hover_escapes_ids_and_class_names():
    def es(ids, name):
        return ExampleSet(tuple(ids), torch.zeros(len(ids), 2), torch.tensor([0, 1]), ("<b>x</b>", "a&b"),
                          "tabular", name)  # fmt: skip

    splits = DatasetSplits(train=es(["<a href='x'>1</a>", "ok"], "train"), val=es(["v1", "v2"], "val"),
                           test=es(["t1", "t2"], "test"), spec={})  # fmt: skip
    hover = map_hover(splits, ["<a href='x'>1</a>", "ok"], ["train", "train"])
    assert "<a" not in hover[0] and "&lt;a href=&#x27;x&#x27;&gt;1&lt;/a&gt;" in hover[0]
    assert "&lt;b&gt;x&lt;/b&gt;" in hover[0] and "a&amp;b" in hover[1]
