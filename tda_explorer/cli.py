"""Headless CLI: `python -m tda_explorer train|import|runs|attribute ...` (also the `tda-explorer` script).

Every long step prints a tqdm progress bar; results go to the workspace (`--workspace`,
else `$TDA_WORKSPACE`, else ./workspace) and are reused when asked for again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tqdm import tqdm

from tda_explorer.cli_commands.common import parse_settings
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


def _key_values(items: Sequence[str]) -> dict[str, str]:
    """`key=value` pairs as text (the value may be empty or contain "=")."""
    out = {}
    for item in items:
        if "=" not in item:
            raise TDAError(f"setting {item!r} is not of the form key=value (e.g. --set params=head).")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def _int_at_least(minimum: int, why: str = ""):
    """An argparse type: an integer >= `minimum` (`why` is said when it is smaller)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{why}, got {value}")
        return value

    return parse


def _dataset_spec(args: argparse.Namespace):
    """The DatasetSpec of `--dataset/--path/--data-option/--split-seed/--noise*`.

    `--data-option` values are typed by the loader's signature (`data.parse_options`), not by JSON:
    `label_column=123` is the column "123", `feature_columns=a,b` a list, `image_size=64,64` a pair.
    """
    from tda_explorer.data import DatasetSpec
    from tda_explorer.data.registry import parse_options

    options = parse_options(args.dataset, _key_values(args.data_option or []))
    return DatasetSpec(
        name=args.dataset,
        path=args.path,
        options=options,
        noise_fraction=args.noise,
        noise_seed=args.noise_seed,
        split_seed=getattr(args, "split_seed", 0),
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
        model_cfg = model_config_from_dict({**model_cfg.to_dict(), **parse_settings(args.model_option)})
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

    runs, broken = Workspace(args.workspace).scan("runs")
    if not runs and not broken:
        print(
            "no runs yet; train one with `python -m tda_explorer train --dataset mnist5k --model mlp --seeds 3`"
        )
    for meta in runs:
        try:
            print(_run_line(meta))
        except TDAError as exc:
            broken.append((str(meta.get("key", "?")), str(exc)))
    for key, reason in broken:
        print(f"{key}  unreadable: {reason}")
    return 0


def _run_line(meta: dict) -> str:
    """One line of `runs`; ArtifactError (from `run_meta_fields`) if the run's meta is unusable."""
    from tda_explorer.data import describe_spec
    from tda_explorer.errors import ArtifactError
    from tda_explorer.training.runs import run_meta_fields

    key = str(meta.get("key", "?"))
    cfg, seeds, extra = run_meta_fields(key, meta)
    try:
        accs = [m.get("test_acc") for m in extra["metrics"].values()]
        values = [float(a) for a in accs if a is not None]  # NaN is stored as null (e.g. regression)
        cfg["dataset"]["name"]  # a spec without a name is unusable (KeyError below)
        dataset, arch = describe_spec(cfg["dataset"]), cfg["model"]["arch"]
        if "imported" in cfg:
            arch = f"imported {cfg['imported']['factory']}"
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(
            f"meta.json lacks {exc} in its config or metrics; delete runs/{key} and train again."
        ) from None
    acc = f"{sum(values) / len(values):.4f}" if values else "n/a"
    return f"{key}  {dataset:<8} {arch:<7} seeds={list(seeds)} test_acc={acc}  {meta.get('created', '?')}"


def cmd_attribute(args: argparse.Namespace) -> int:
    from tda_explorer.attributors.scores import compute_scores
    from tda_explorer.cli_commands.common import Context, check_method, method_settings_from_args
    from tda_explorer.cli_commands.explain import check_measurement, measured, result_kind
    from tda_explorer.data import DatasetSpec, load_dataset
    from tda_explorer.store import Workspace
    from tda_explorer.training import load_run

    settings = method_settings_from_args(args)
    check_method(args.method, settings)  # a bad setting fails before any work
    measurement = check_measurement(args.measurement, args.split, "true_label")
    ws = Workspace(args.workspace)
    run = load_run(args.run, ws)
    splits = load_dataset(DatasetSpec.from_dict(run.dataset))
    update, bar = _progress_bar(f"attribute {args.method}")
    result = compute_scores(run, splits, args.method, settings, args.split, ws, update)
    bar.close()
    result = measured(Context(ws, run, splits), result, measurement)
    print(
        f"{args.method}{' (predicted class)' if measurement == 'predicted' else ''}: scores {result.scores.shape[0]} queries x {result.scores.shape[1]} train "
        f"({result.seconds:.1f} s) stored in {ws.path(result_kind(measurement), result.key)}"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    import os

    from tda_explorer.data import load_dataset
    from tda_explorer.store import Workspace
    from tda_explorer.training import import_run

    if os.getcwd() not in sys.path:  # "mymodels:build" in the current folder, as `python -m` would find it
        sys.path.insert(0, os.getcwd())
    if args.hf_model:
        return _import_hf(args)
    if args.adapter:
        raise TDAError("--adapter applies to --hf-model folders; give the base folder with --hf-model.")
    if not args.factory:
        raise TDAError(
            "give --factory pkg.mod:build with --weights, or --hf-model DIR for a Hugging Face folder."
        )
    if not args.weights:
        raise TDAError(
            "give the weights: --weights seed0.pt [--weights seed1.pt ...] (a,b,c = checkpoints of one seed)."
        )
    weights = [w.split(",") if "," in w else w for w in args.weights]
    ws = Workspace(args.workspace)
    splits = load_dataset(_dataset_spec(args))
    update, bar = _progress_bar("import")
    run = import_run(
        args.factory,
        weights,
        splits,
        train_fn=args.train_fn,
        weight_decay=args.weight_decay,
        workspace=ws,
        progress=update,
    )
    bar.close()
    return _report_import(run)


def _import_hf(args: argparse.Namespace) -> int:
    """`import --hf-model DIR [--hf-model DIR ...] [--adapter DIR ...]`: Hugging Face folders, one per seed."""
    from tda_explorer.data import load_dataset
    from tda_explorer.store import Workspace
    from tda_explorer.training import import_hf_run

    if args.factory or args.weights or args.train_fn:
        raise TDAError("--hf-model takes no --factory / --weights / --train-fn: the folder holds the model.")
    folders = args.hf_model[0] if len(args.hf_model) == 1 else args.hf_model
    adapters = None if not args.adapter else args.adapter[0] if len(args.adapter) == 1 else args.adapter
    splits = load_dataset(_dataset_spec(args))
    update, bar = _progress_bar("import")
    run = import_hf_run(
        folders,
        splits,
        adapter=adapters,
        max_length=args.max_length,
        weight_decay=args.weight_decay,
        workspace=Workspace(args.workspace),
        progress=update,
    )
    bar.close()
    return _report_import(run)


def _report_import(run) -> int:
    """Print an imported run's mean test accuracy (stderr) and its key (stdout); exit code 0."""
    accs = [m["test_acc"] for m in run.metrics.values()]
    print(
        f"imported {len(run.seeds)} seed(s), mean test accuracy {sum(accs) / len(accs):.4f}", file=sys.stderr
    )
    print(run.key)
    return 0


def _add_data_args(p: argparse.ArgumentParser, datasets: Sequence[str]) -> None:
    p.add_argument("--dataset", required=True, choices=datasets)
    p.add_argument(
        "--path", help="file or folder for user datasets (tabular, text, images) or the sst2 folder"
    )
    p.add_argument(
        "--data-option",
        action="append",
        metavar="KEY=VALUE",
        help="loader option, typed by the loader: label_column=y, feature_columns=a,b, image_size=64,64, "
        "standardize=false, split_column=split, header=false",
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split (default 0)")
    p.add_argument("--noise", type=float, default=0.0, help="fraction of training labels to flip (default 0)")
    p.add_argument("--noise-seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    from tda_explorer.attributors import ATTRIBUTORS
    from tda_explorer.cli_commands import add_commands, settings_epilog
    from tda_explorer.cli_commands.common import add_method_flags
    from tda_explorer.cli_commands.explain import add_measurement_arg
    from tda_explorer.data import DATASET_NAMES
    from tda_explorer.models import MODEL_CONFIGS

    parser = argparse.ArgumentParser(prog="tda-explorer", description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", help="workspace directory (default: $TDA_WORKSPACE or ./workspace)")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model over several seeds (cached in the workspace)")
    _add_data_args(t, DATASET_NAMES)
    t.add_argument("--model", required=True, choices=sorted(MODEL_CONFIGS))
    t.add_argument(
        "--model-option", action="append", metavar="KEY=VALUE", help="e.g. hidden=[512] or dropout=0.1"
    )
    t.add_argument(
        "--seeds",
        type=_int_at_least(1, " (a run needs a trained model)"),
        default=1,
        help="number of seeds, at least 1 (default 1)",
    )
    t.add_argument("--seed0", type=_int_at_least(0), default=0, help="first seed (default 0)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--optimizer", choices=["sgd", "adam"])
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--checkpoints", type=int, help="checkpoints kept per seed (default 5)")
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

    i = sub.add_parser(
        "import",
        help="import a model trained anywhere (your factory + weights per seed, or Hugging Face folders)",
    )
    _add_data_args(i, DATASET_NAMES)
    i.add_argument("--factory", help="'package.module:function' returning your nn.Module")
    i.add_argument(
        "--hf-model",
        action="append",
        metavar="DIR",
        help="a Hugging Face save_pretrained folder (sequence classifier + tokenizer); repeat = one per seed",
    )
    i.add_argument(
        "--adapter", action="append", metavar="DIR", help="a peft adapter folder on --hf-model (one per seed)"
    )
    i.add_argument("--max-length", type=int, default=128, help="--hf-model: token limit per text")
    i.add_argument(
        "--weights",
        action="append",
        metavar="FILE[,FILE...]",
        help="one per seed: a .pt/.safetensors state dict (comma-separated files = that seed's checkpoints)",
    )
    i.add_argument(
        "--train-fn", help="'package.module:function' = your training loop, for methods that retrain"
    )
    i.add_argument(
        "--weight-decay",
        type=float,
        default=0.0,
        help="L2 coefficient of your training objective (default 0)",
    )
    i.set_defaults(func=cmd_import)

    r = sub.add_parser("runs", help="list the trained runs in the workspace")
    r.set_defaults(func=cmd_runs)

    a = sub.add_parser(
        "attribute",
        help="compute an attributor's scores for a run (cached)",
        epilog=settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("--run", required=True, help="run key (see `runs`)")
    a.add_argument("--method", required=True, metavar="M", help=f"one of {', '.join(sorted(ATTRIBUTORS))}")
    a.add_argument("--split", default="test", choices=["test", "val"], help="query split (default test)")
    a.add_argument("--set", action="append", metavar="KEY=VALUE", help="attributor setting, e.g. params=head")
    add_measurement_arg(
        a, "default true_label (the stored scores); predicted also stores the predicted-class rows"
    )
    add_method_flags(a)  # --proj-dim 512, --solver exact, ... (every method's settings)
    a.set_defaults(func=cmd_attribute)
    add_commands(sub)  # explain, dtda, map, export, evaluate, mislabels, flags, prune
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 with a one-line message for a user error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TDAError as e:
        tqdm.write(f"error: {e}", file=sys.stderr)  # on its own line, below any open progress bar
        return 2
    except BaseException:  # a bug or Ctrl-C: end the open bars' lines, so the traceback starts on its own
        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
        raise
