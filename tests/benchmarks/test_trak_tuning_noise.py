"""The selection rules compared by `benchmarks.trak_tuning_noise` and its loss read from the LDS curve."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.trak_tuning_noise import FINE, choose, lds_at, markdown
from tda_explorer.attributors.trak_tuning import refine

FACTORS = np.array([0.0, 0.1, 1.0, 2.0, 5.0, 10.0])


def test_refine_rule_is_the_shipped_one_and_one_se_moves_to_larger_factors_within_the_noise():
    mean = np.array([0.1, 0.3, 0.55, 0.60, 0.59, 0.4])
    signs = np.resize([1.0, -1.0], 200)  # mean 0, standard deviation 1 over the queries
    spread = np.array([0.0, 0.0, 0.0, 0.0, 0.3, 0.0])  # only c = 5 is noisy: SE of its gap 0.3 / sqrt(200)
    rho = mean[:, None] + spread[:, None] * signs
    shipped = refine(dict(zip(FACTORS.tolist(), mean.tolist(), strict=True)))
    assert choose("refine", FACTORS, rho) == pytest.approx(shipped, rel=1e-12)
    assert choose("one_se", FACTORS, rho) == 5.0  # 0.59 lies within one SE (0.021) of 0.60; 0.4 does not
    assert choose("one_se", FACTORS, np.repeat(mean[:, None], 200, axis=1)) == 2.0  # no noise: the best
    assert 1.0 <= choose("wide", FACTORS, rho) <= 10.0


def test_lds_at_interpolates_in_log_factor_and_reads_plain_trak_at_zero():
    curve = np.concatenate([[0.05], np.log(np.asarray(FINE[1:]))])  # LDS = log c on the positive grid
    assert lds_at(curve, 0.0) == 0.05
    assert lds_at(curve, 3.0) == pytest.approx(np.log(3.0), abs=1e-9)


def test_markdown_lists_every_design_and_row():
    design = {"fixed_factor": 2.5, "fixed_loss": 0.01, "mean_loss": 0.004}
    result = {
        "rows": [
            {"protocol": "p", "proj_dim": 512, "n_models": 1, "best": 0.6, "best_factor": 5.0,
             "designs": {"16x100 refine": design, "24x250 refine": design}},
        ],
        "truth": {"n_subsets": 50, "n_query": 150},
        "pool": {"subsets": 64, "queries": 250},
        "draws": 10,
        "summary": {"24x250 refine": {"mean_loss": 0.002, "p_loss_over_0.015": 0.01, "p_loss_over_0.02": 0.0,
                                      "fixed_max_loss": 0.007}},
    }  # fmt: skip
    text = markdown(result)
    assert "| 24x250 refine | 0.0020 | 1.0 % | 0.0 % | 0.007 |" in text
    assert "| p | 512 | 1 | 0.600 (5) | 2.50, 0.010 | 2.50, 0.010 |" in text
