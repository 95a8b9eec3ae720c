"""Headless CLI: `python -m tda_explorer train|runs|attribute ...` (also the `tda-explorer` script).

Every long step prints a tqdm progress bar; results go to the workspace (`--workspace`,
else `$TDA_WORKSPACE`, else ./workspace) and are reused when asked for again.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tqdm import tqdm

from tda_explorer.errors import TDAError


def _progress_bar(desc: str):
    """A Progress callback `(done, total, msg)` drawing a tqdm bar; returns (callback, bar)."""
    bar = tqdm(total=1, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)

    def update(done: int, total: int, msg: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(msg[:60])
        bar.refresh()

    return update, bar


def _parse_settings(items: Sequence[str]) -> dict:
    """`key=value` pairs; values parsed as JSON when possible (numbers, lists, true/false), else strings."""
    out = {}
    for item in items:
        if "=" not in item:
            raise TDAError(f"setting {item!r} is not of the form key=value (e.g. --set params=head).")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _dataset_spec(args: argparse.Namespace):
    from tda_explorer.data import DatasetSpec

    options = _parse_settings(args.data_option or [])
    return DatasetSpec(
        name=args.dataset,
        path=args.path,
        options=options,
        noise_fraction=args.noise,
        noise_seed=args.noise_seed,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from tda_explorer.data import load_dataset
    from tda_explorer.models import default_model_config, model_config_from_dict
    from tda_explorer.store import Workspace
    from tda_explorer.training import TrainConfig, default_train_config, train_run
    from tda_explorer.training.executor import make_executor

    ws = Workspace(args.workspace)
    splits = load_dataset(_dataset_spec(args))
    model_cfg = default_model_config(args.model)
    if args.model_option:
        model_cfg = model_config_from_dict({**model_cfg.to_dict(), **_parse_settings(args.model_option)})
    overrides = {
        k: v
        for k, v in {
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "optimizer": args.optimizer,
            "weight_decay": args.weight_decay,
            "checkpoints": args.checkpoints,
        }.items()
        if v is not None
    }
    train_cfg = TrainConfig.from_dict({**default_train_config(args.model).to_dict(), **overrides})
    seeds = list(range(args.seed0, args.seed0 + args.seeds))
    update, bar = _progress_bar(f"train {args.dataset}/{args.model}")
    executor = make_executor(args.executor, args.workers, args.ray_address)
    try:
        run = train_run(splits, model_cfg, train_cfg, seeds, ws, executor, update)
    finally:
        getattr(executor, "shutdown", lambda: None)()  # stops a local Ray instance it started
    bar.close()
    print(f"run {run.key} stored in {ws.path('runs', run.key)}")
    for s in run.seeds:
        m = run.metrics[s]
        print(f"  seed {s}: test acc {m['test_acc']:.4f}  val acc {m['val_acc']:.4f}  ({m['seconds']:.1f} s)")
    print(f"  mean test accuracy {run.mean_metric('test_acc'):.4f} over {len(run.seeds)} seed(s)")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from tda_explorer.store import Workspace

    runs = Workspace(args.workspace).list_runs()
    if not runs:
        print(
            "no runs yet; train one with `python -m tda_explorer train --dataset mnist5k --model mlp --seeds 3`"
        )
    for meta in runs:
        cfg = meta["config"]
        accs = [m["test_acc"] for m in meta["extra"]["metrics"].values()]
        print(
            f"{meta['key']}  {cfg['dataset']['name']:<8} {cfg['model']['arch']:<7} seeds={cfg['seeds']} "
            f"test_acc={sum(accs) / len(accs):.4f}  {meta['created']}"
        )
    return 0


def cmd_attribute(args: argparse.Namespace) -> int:
    from tda_explorer.attributors.cache import compute_scores
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.store import Workspace
    from tda_explorer.training import load_run

    ws = Workspace(args.workspace)
    run = load_run(args.run, ws)
    splits = load_dataset(DatasetSpec.from_dict(run.dataset))
    update, bar = _progress_bar(f"attribute {args.method}")
    result = compute_scores(run, splits, args.method, _parse_settings(args.set or []), args.split, ws, update)
    bar.close()
    print(
        f"{args.method}: scores {result.scores.shape[0]} queries x {result.scores.shape[1]} train "
        f"({result.seconds:.1f} s) stored in {ws.path('scores', result.key)}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tda_explorer.attributors import ATTRIBUTORS
    from tda_explorer.data import DATASET_NAMES
    from tda_explorer.models import MODEL_CONFIGS

    parser = argparse.ArgumentParser(prog="tda-explorer", description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", help="workspace directory (default: $TDA_WORKSPACE or ./workspace)")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model over several seeds (cached in the workspace)")
    t.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    t.add_argument(
        "--path", help="file or folder for user datasets (tabular, text, images) or the sst2 folder"
    )
    t.add_argument(
        "--data-option", action="append", metavar="KEY=VALUE", help="loader option, e.g. label_column=y"
    )
    t.add_argument("--model", required=True, choices=sorted(MODEL_CONFIGS))
    t.add_argument(
        "--model-option", action="append", metavar="KEY=VALUE", help="e.g. hidden=[512] or dropout=0.1"
    )
    t.add_argument("--seeds", type=int, default=1, help="number of seeds (default 1)")
    t.add_argument("--seed0", type=int, default=0, help="first seed (default 0)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--optimizer", choices=["sgd", "adam"])
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--checkpoints", type=int, help="checkpoints kept per seed (default 5)")
    t.add_argument("--noise", type=float, default=0.0, help="fraction of training labels to flip (default 0)")
    t.add_argument("--noise-seed", type=int, default=0)
    t.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local worker processes (default min(cores, 4)), or CPUs of a local Ray instance (default all)",
    )
    t.add_argument(
        "--executor",
        choices=["local", "ray"],
        default=None,
        help="where jobs run: local processes (default) or Ray; default $TDA_EXECUTOR, else local",
    )
    t.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (e.g. ray://head:10001) instead of starting a local Ray instance",
    )
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("runs", help="list the trained runs in the workspace")
    r.set_defaults(func=cmd_runs)

    a = sub.add_parser("attribute", help="compute an attributor's scores for a run (cached)")
    a.add_argument("--run", required=True, help="run key (see `runs`)")
    a.add_argument("--method", required=True, choices=sorted(ATTRIBUTORS))
    a.add_argument("--split", default="test", choices=["test", "val"], help="query split (default test)")
    a.add_argument("--set", action="append", metavar="KEY=VALUE", help="attributor setting, e.g. params=head")
    a.set_defaults(func=cmd_attribute)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 with a one-line message for a user error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TDAError as e:
        tqdm.write(f"error: {e}", file=sys.stderr)  # on its own line, below any open progress bar
        return 2
