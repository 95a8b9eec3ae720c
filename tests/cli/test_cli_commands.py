"""One test per CLI command on the digits demo (a tiny logistic regression, 2 seeds x 2 epochs, trained
once per session): the human output, `--json` parsed back, exported files read back, and one bad input
each (exit code 2, one `error: ...` line, with a close-match suggestion where there is one)."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import types

import numpy as np
import pandas as pd
import pytest

from tda_explorer.cli import main
from tda_explorer.store.exports import kept_ids

QUERY = "digits-0002"  # a test id of the digits demo
TRAIN_ID = "digits-0000"


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory):
    """(workspace, run key) of a tiny digits run; retrainings run in-process (TDA_WORKERS=1)."""
    ws = str(tmp_path_factory.mktemp("cli_ws"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TDA_WORKERS", "1")
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            argv = ["--workspace", ws, "train", "--dataset", "digits", "--model", "logreg", "--seeds", "2"]
            assert main([*argv, "--epochs", "2", "--workers", "1"]) == 0
        yield ws, out.getvalue().split()[1]


@pytest.fixture
def cli(cli_run, capsys, monkeypatch):
    """`cli(*args)` -> (exit code, stdout, stderr) of `tda-explorer --workspace WS *args` in-process."""
    monkeypatch.setenv("TDA_WORKERS", "1")
    ws, _ = cli_run

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--workspace", ws, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def key(cli_run):
    return cli_run[1]


def assert_user_error(result, *fragments: str) -> None:
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(f in lines[0] for f in fragments), lines[0]


def test_attribute_help_lists_every_method_setting(capsys):
    with pytest.raises(SystemExit):
        main(["attribute", "--help"])
    text = capsys.readouterr().out
    assert "solver=ekfac" in text and "proj_dim=2048" in text and "params=head" in text
    assert "workspace=" not in text  # object-valued settings are not for the command line
    assert "--measurement" in text and "pushes the model toward its" in " ".join(text.split())


def test_unknown_setting_names_the_valid_ones(cli, key):
    result = cli("attribute", "--run", key, "--method", "influence", "--set", "solvr=cg")
    assert_user_error(result, "'solvr'", "did you mean 'solver'", "damping_factor")


def test_explain(cli, key):
    code, out, _ = cli("explain", "--run", key[:8], "--method", "grad_dot", "--query", QUERY, "--k", "3")
    assert code == 0 and "proponents:" in out and "opponents:" in out
    code, out, _ = cli(
        "explain", "--run", key, "--method", "grad_dot", "--query", QUERY, "--k", "3", "--json"
    )
    data = json.loads(out)
    assert data["query"]["id"] == QUERY and len(data["proponents"]) == len(data["opponents"]) == 3
    pro = [r["score"] for r in data["proponents"]]
    assert pro == sorted(pro, reverse=True) and pro[0] > data["opponents"][0]["score"]
    assert_user_error(
        cli("explain", "--run", key, "--method", "grad_dot", "--query", "digits-002"),
        "did you mean 'digits-0002'",
    )
    assert_user_error(
        cli("explain", "--run", key, "--method", "grad_dt", "--query", QUERY), "did you mean 'grad_dot'"
    )


def test_dtda(cli, key):
    code, out, _ = cli(
        "dtda", "--run", key, "--query", QUERY, "--k", "2", "--set", 'base_settings={"params":"head"}'
    )
    assert code == 0 and "loss per seed" in out
    code, out, _ = cli(
        "dtda",
        "--run",
        key,
        "--query",
        QUERY,
        "--train-id",
        TRAIN_ID,
        "--set",
        'base_settings={"params":"head"}',
        "--json",
    )
    data = json.loads(out)
    assert data["seeds"] == [0, 1] and len(data["measurements"]) == 2
    assert [r["id"] for r in data["top"]] == [TRAIN_ID] and len(data["top"][0]["deltas"]) == 2
    assert_user_error(cli("dtda", "--run", key, "--query", QUERY, "--set", "bse=trak"), "did you mean 'base'")


def test_map(cli, key, tmp_path, monkeypatch):
    class FakeUMAP:  # the real UMAP compiles numba code for ~30 s; the CLI's plumbing is what is tested
        def __init__(self, **kwargs):
            pass

        def fit_transform(self, x):
            return np.asarray(x)[:, :2]

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    out_file = tmp_path / "coords.parquet"
    code, out, _ = cli("map", "--run", key, "--out", str(out_file))
    assert code == 0 and "written to" in out
    table = pd.read_parquet(out_file)
    assert list(table.columns) == ["id", "split", "x", "y", "label", "class_name"] and len(table) == 1297
    code, out, _ = cli("map", "--run", key, "--json")
    assert len(json.loads(out)["points"]) == 1297
    assert_user_error(
        cli("map", "--run", key, "--out", str(tmp_path / "coords.txt")), ".csv, .json or .parquet"
    )


def test_export(cli, key, tmp_path):
    topk = tmp_path / "topk.csv"
    code, out, _ = cli(
        "export", "--run", key, "--method", "grad_dot", "--what", "topk", "--k", "2", "--out", str(topk)
    )
    assert code == 0 and "1000 rows" in out
    table = pd.read_csv(topk)
    assert set(table["kind"]) == {"proponent", "opponent"} and len(table) == 250 * 4
    scores = tmp_path / "scores.parquet"
    code, out, _ = cli(
        "export", "--run", key, "--method", "grad_dot", "--what", "scores", "--out", str(scores), "--json"
    )
    assert json.loads(out)["rows"] == 250
    assert pd.read_parquet(scores).shape == (250, 1 + 1297)
    assert_user_error(cli("export", "--run", key, "--what", "scores", "--out", str(scores)), "needs --method")


@pytest.mark.parametrize(
    "metric, extra, check",
    [
        ("lds", ["--subsets", "10"], lambda d: -1 <= d["mean"] <= 1 and d["n_query"] == 250),
        ("pruning", ["--largest", "0.1"], lambda d: [r["fraction"] for r in d["rows"]] == [0.0, 0.1]),
        ("counterfactual", ["--queries", "2", "--ks", "5"], lambda d: d["rows"][0]["k"] == 5),
        ("mislabel", ["--noise", "0.1"], lambda d: 0 <= d["result"]["auc"] <= 1 and d["n_flipped"] > 0),
    ],
)
def test_evaluate(cli, key, metric, extra, check):
    code, out, _ = cli("evaluate", "--run", key, "--method", "grad_dot", "--metric", metric, *extra, "--json")
    assert code == 0 and check(json.loads(out))


def test_evaluate_human_output_and_bad_metric(cli, key):
    code, out, _ = cli("evaluate", "--run", key, "--method", "grad_dot", "--metric", "lds", "--subsets", "10")
    assert code == 0 and out.startswith("LDS of grad_dot:")
    assert_user_error(
        cli("evaluate", "--run", key, "--method", "grad_dot", "--metric", "lsd"), "did you mean 'lds'"
    )


def test_mislabels_by_the_combined_score_and_cleanlab(cli, key):
    pytest.importorskip("cleanlab.rank")
    from tda_explorer.evaluation.run_label_quality import CLEANLAB, COMBINED

    code, out, _ = cli("mislabels", "--run", key, "--score", "combined", "--top", "4", "--json")
    data = json.loads(out)
    assert code == 0 and data["score"] == COMBINED and len(data["rows"]) == 4
    scores = [r["score"] for r in data["rows"]]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= v <= 1.0 for v in scores)
    data = json.loads(cli("mislabels", "--run", key, "--score", "cleanlab", "--top", "4", "--json")[1])
    assert data["score"] == CLEANLAB
    with pytest.raises(SystemExit) as exit_info:  # argparse: a one-line usage error naming the choices
        cli("mislabels", "--run", key, "--score", "oof")
    assert exit_info.value.code == 2


def test_mislabels_rank_flag_unflag(cli, key):
    code, out, _ = cli("mislabels", "--run", key, "--top", "5", "--json")
    data = json.loads(out)
    assert data["score"] == "own training loss" and [r["rank"] for r in data["rows"]] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in data["rows"]]
    assert scores == sorted(scores, reverse=True)
    code, out, _ = cli("mislabels", "--run", key, "--method", "grad_dot", "--top", "3")
    assert code == 0 and "self-influence · grad_dot" in out
    top = data["rows"][0]["id"]
    assert cli("mislabels", "--run", key, "--flag", top, "--label", "3", "--note", "=looks like 3")[0] == 0
    data = json.loads(cli("mislabels", "--run", key, "--top", "5", "--hide-flagged", "--json")[1])
    assert top not in [r["id"] for r in data["rows"]]
    data = json.loads(cli("mislabels", "--run", key, "--unflag", top, "--json")[1])
    assert data["n_unflagged"] == 1
    assert_user_error(cli("mislabels", "--run", key, "--flag", "digits-000"), "did you mean 'digits-0000'")


def test_flags_list_and_export(cli, key, tmp_path):
    assert cli("mislabels", "--run", key, "--flag", TRAIN_ID, "--label", "7", "--note", "=SUM(A1)")[0] == 0
    code, out, _ = cli("flags", "--run", key)
    assert code == 0 and TRAIN_ID in out
    data = json.loads(cli("flags", "--run", key, "--json")[1])
    assert [f["id"] for f in data["flags"]] == [TRAIN_ID] and data["flags"][0]["suggested_label"] == "7"
    path = tmp_path / "flags.csv"
    assert cli("flags", "--run", key, "--export", str(path))[0] == 0
    note = pd.read_csv(path, dtype=str, keep_default_na=False)["note"].tolist()
    assert note == ["'=SUM(A1)"]  # a spreadsheet shows it as text instead of running it (store.exports)
    assert cli("mislabels", "--run", key, "--unflag", TRAIN_ID)[0] == 0
    assert_user_error(cli("flags", "--run", key[:-1] + "x"), "did you mean")


def test_prune_exports_the_kept_list(cli, key, tmp_path):
    path = tmp_path / "kept.parquet"
    code, out, _ = cli(
        "prune", "--run", key, "--method", "grad_dot", "--fraction", "0.1", "--export", str(path)
    )
    assert code == 0 and "remove 130 of 1297" in out
    assert len(kept_ids(path)) == 1297 - 130
    data = json.loads(cli("prune", "--run", key, "--method", "grad_dot", "--fraction", "0.1", "--json")[1])
    assert data["n_removed"] == 130 and sum(data["removed_per_class"].values()) == 130
    assert not set(data["removed"]) & set(kept_ids(path))
    by = {r: json.loads(cli("prune", "--run", key, "--method", "grad_dot", "--fraction", "0.1", "--rule", r,
                            "--json")[1])["removed"] for r in ("sum", "harm_loss")}  # fmt: skip
    assert len(by["harm_loss"]) == 130 and by["harm_loss"] != by["sum"]  # own loss read from the run
    assert_user_error(
        cli("prune", "--run", key, "--method", "grad_dot", "--fraction", "0.1", "--threshold", "0"),
        "exactly one",
    )


@pytest.mark.parametrize(
    "command", ["explain", "dtda", "map", "export", "evaluate", "mislabels", "flags", "prune"]
)
def test_help_of_every_new_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "--json" in capsys.readouterr().out


def test_json_for_the_original_commands(cli, key):
    runs = json.loads(cli("runs", "--json")[1])["runs"]
    assert {r["key"]: r["seeds"] for r in runs}[key] == [0, 1]  # (evaluate mislabel adds a noisy run)
    data = json.loads(cli("attribute", "--run", key, "--method", "grad_dot", "--json")[1])
    assert (data["n_query"], data["n_train"]) == (250, 1297) and data["settings"]["params"] == "head"
    argv = ["train", "--dataset", "digits", "--model", "logreg", "--seeds", "2", "--epochs", "2"]
    code, out, err = cli(*argv, "--workers", "1", "--json")  # the same run: reused from the workspace
    assert code == 0 and json.loads(out)["key"] == key and "stored in" in err


def test_multi_line_core_errors_become_one_line():
    from tda_explorer.cli_commands.common import one_line_errors
    from tda_explorer.errors import ArtifactError

    def command(args):
        raise ArtifactError("Artifact x was made with a different config:\n  seed: 0 != 1\nDelete x.")

    with pytest.raises(ArtifactError) as info:
        one_line_errors(command)(None)
    assert str(info.value) == "Artifact x was made with a different config: seed: 0 != 1; Delete x."


def test_attribute_bad_method_is_one_line_with_a_suggestion(cli, key):
    assert_user_error(cli("attribute", "--run", key, "--method", "trek"), "did you mean 'trak'")
    assert_user_error(cli("attribute", "--run", "x" + key[1:], "--method", "trak"), f"did you mean {key!r}")
    assert cli("attribute", "--run", key[:6], "--method", "grad_dot")[0] == 0  # a unique prefix is enough


def test_measurement_of_explain_and_attribute(cli, cli_run, key):
    """`explain` explains the predicted class by default on the test split (as the app); `true_label` gives
    the stored scores; `attribute --measurement predicted` stores the predicted-class rows."""
    from tda_explorer.attributors.measurement import PREDICTED_KIND, predicted_classes, scores_for_measurement
    from tda_explorer.attributors.scores import compute_scores
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.store import Workspace
    from tda_explorer.training import load_run

    ws = Workspace(cli_run[0])
    run = load_run(key, ws)
    splits = load_dataset(DatasetSpec.from_dict(run.dataset))
    pred = predicted_classes(run, splits)
    wrong = np.flatnonzero(pred != splits.test.labels.numpy())
    assert len(wrong), "the 2-epoch logreg makes mistakes on digits"
    query = splits.test.ids[int(wrong[0])]
    base = compute_scores(run, splits, "grad_dot", {"params": "head"}, "test", ws)
    on_pred = scores_for_measurement(run, splits, base, "predicted", pred, ws)
    row = base.query_ids.index(query)
    argv = ("explain", "--run", key, "--method", "grad_dot", "--query", query, "--k", "3", "--json")
    for extra, expected, scores in (
        ((), "predicted", on_pred),
        (("--measurement", "true_label"), "true_label", base),
    ):
        data = json.loads(cli(*argv, *extra)[1])
        assert data["measurement"] == expected and data["score_key"] == scores.key
        top = np.sort(scores.scores[row])[::-1][:3]
        assert [r["score"] for r in data["proponents"]] == pytest.approx(top.tolist())
    assert not np.allclose(on_pred.scores[row], base.scores[row])  # the two measurements differ on a mistake
    code, out, _ = cli(*argv[:-1])
    assert code == 0 and f"loss of the predicted class {splits.test.class_names[pred[wrong[0]]]}" in out

    data = json.loads(
        cli("attribute", "--run", key, "--method", "grad_dot", "--measurement", "predicted", "--json")[1]
    )
    assert data["measurement"] == "predicted" and data["score_key"] == on_pred.key
    assert data["path"] == str(ws.path(PREDICTED_KIND, on_pred.key))
    code, out, _ = cli("attribute", "--run", key, "--method", "grad_dot")
    assert code == 0 and out.startswith("grad_dot: scores") and base.key in out

    assert_user_error(cli(*argv, "--measurement", "predictd"), "'predictd'", "did you mean 'predicted'")
    assert_user_error(
        cli("attribute", "--run", key, "--method", "grad_dot", "--measurement", "pred"), "true_label"
    )
    assert_user_error(cli(*argv, "--split", "val", "--measurement", "predicted"), "--split test")


def test_prune_iterative_rule_retrains_and_is_cached(cli, key, monkeypatch):
    from tda_explorer.evaluation import iterative_pruning

    argv = ["prune", "--run", key, "--method", "grad_dot", "--fraction", "0.05", "--json"]
    one_shot = json.loads(cli(*argv, "--rule", "harm")[1])["removed"]
    iterative = json.loads(cli(*argv, "--rule", "iterative_harm")[1])["removed"]
    assert len(iterative) == len(one_shot) == 65  # rounds of 32 + 33 (not 32 + 32 + 1)
    assert (
        iterative[:32] == one_shot[:32] and iterative != one_shot
    )  # round 1 is one-shot's; round 2 re-scored

    def no_retraining(*args, **kwargs):
        raise AssertionError("the cached rounds were recomputed")

    monkeypatch.setattr(iterative_pruning, "retrain_kept", no_retraining)
    assert json.loads(cli(*argv, "--rule", "iterative_harm")[1])["removed"] == iterative  # cached
    assert_user_error(cli(*argv, "--rule", "iterative_harm", "--split", "test"), "--split val")
    argv[argv.index("--fraction") : argv.index("--fraction") + 2] = ["--threshold", "0.5"]
    assert_user_error(cli(*argv, "--rule", "iterative_harm"), "give a fraction")
