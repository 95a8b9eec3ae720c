"""The smooth-recipe benchmark renders its RESULTS.md section from partial documents (rows saved as they
finish, cost measured separately)."""

from __future__ import annotations

from benchmarks.unrolled_smooth import markdown


def lds(mean: float) -> dict:
    return {"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1}


def test_markdown_of_partial_documents():
    cost = {
        "training_once": {"cpu_seconds": 2.7},
        "fit": {"cpu_seconds": 1.3, "load_1m": 20.0},
        "one_query_score": {"cpu_seconds": 4.5},
        "32_queries_score": {"cpu_seconds": 31.8},
        "one_query_cpu_seconds": 5.8,
        "all_500_cpu_vs_training": 186.5,
    }
    doc = {
        "n_query": 50,
        "n_subsets": 40,
        "recipes": {
            "mlp-smooth": {
                "test_acc_seed0": 0.9,
                "metasmoothness": {"score": 0.81, "loss_corr": 0.98},
                "methods": {"unrolled": {"alpha=0.99 fixed": lds(0.902), "cpu_seconds": 60.0}},
                "cost": cost,
            },
            "default": {"methods": {}, "cost": cost},
        },
    }
    text = markdown(doc)
    assert "Recipe `mlp-smooth` (M = 40, test acc 0.900, metasmoothness 0.81" in text
    assert "| unrolled | 0.902 [0.80, 1.00] | 60.0 |" in text
    assert text.count("all 500 at that rate = 186.5 x training") == 2
