"""The ``dse-monitor`` command: ``fit`` (LightningCLI), ``sweep`` and ``compare``.

    dse-monitor fit --config configs/digits.yaml [--model.init_std 0.01 --seed_everything 2 ...]
    dse-monitor sweep --config configs/digits.yaml --grid model.init_std=0.01,0.1 --seeds 1,2,3 [--root runs/init] [--key value ...]
    dse-monitor compare runs/init --metric dse --group-by model.init_std [--out fig.png]

``fit`` (and ``validate``/``test``) is Lightning's ``LightningCLI`` over
:class:`~dse_monitor.train.model.ImageClassifier` and
:class:`~dse_monitor.train.data.ImageDataModule`: every argument of the model, the data,
the trainer and its callbacks (``DSEMonitor`` among them) can be set in the YAML config
and overridden on the command line. ``data.num_classes`` and ``data.image_size`` are
passed to the model, ``model.in_chans`` to the data.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .tables import format_run_table, run_table

__all__ = ["format_run_table", "main", "parse_grid", "plan_sweep", "run_table"]

OVERVIEW = """usage: dse-monitor {fit,validate,test,sweep,compare} ...

  fit       train with DSE/DSMI monitoring: dse-monitor fit --config configs/digits.yaml
            (LightningCLI: every option can be overridden, e.g. --model.init_std 0.01
             --seed_everything 2 --trainer.max_epochs 5; see `dse-monitor fit --help`)
  validate  / test: LightningCLI's other subcommands
  sweep     run a grid of fits into one log root:
            dse-monitor sweep --config configs/digits.yaml --grid model.init_std=0.01,0.1 --seeds 1,2,3 --root runs/init
  compare   mean +/- std over seeds per epoch, grouped by a hyperparameter:
            dse-monitor compare runs/init --metric dse --group-by model.init_std --out init.png
            [--x step] [--plot info-plane | --plot layers] [--correlate val_acc]
  score     rank models by DSE/DSMI on one probe set, correlated with accuracy:
            dse-monitor score runs/init/*/lightning_logs/*/checkpoints/*.ckpt --config configs/digits.yaml --out scores
"""


# ---------------------------------------------------------------------------------- fit
def _cli_class(model_key: str = "model"):
    from lightning.pytorch.cli import LightningCLI

    class DSEMonitorCLI(LightningCLI):
        """LightningCLI that links data and model and reports where the logs are."""

        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.link_arguments("data.image_size", f"{model_key}.img_size")
            parser.link_arguments(f"{model_key}.in_chans", "data.in_chans")
            parser.link_arguments("data.num_classes", f"{model_key}.num_classes", apply_on="instantiate")

        def _hparams(self) -> dict[str, Any]:
            from .compare import flatten

            cfg = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
            tree = cfg.as_dict() if hasattr(cfg, "as_dict") else dict(cfg)
            flat = flatten({k: tree.get(k) for k in ("model", "data")})
            flat["seed_everything"] = tree.get("seed_everything")
            return {k: v for k, v in flat.items() if isinstance(v, (int, float, str, bool)) or v is None}

        def before_fit(self) -> None:
            from .scalars import EpochScalars

            trainer = self.trainer
            if not any(isinstance(cb, EpochScalars) for cb in trainer.callbacks):
                trainer.callbacks.append(EpochScalars())  # the accuracies of the closing table
            for logger in trainer.loggers:
                logger.log_hyperparams(self._hparams())
            if trainer.is_global_zero:
                tb = _tensorboard_logger(trainer)
                if tb is not None:
                    print(f"dse-monitor: logs in {tb.log_dir}")
                    print(f"dse-monitor: view them with: tensorboard --logdir {tb.save_dir}")
                elif trainer.loggers:
                    print(f"dse-monitor: logs in {trainer.log_dir}")
                else:
                    print("dse-monitor: no logger configured; the curves are only printed at the end")
                sys.stdout.flush()

        def after_fit(self) -> None:
            if self.trainer.is_global_zero:
                table = run_table(self.trainer)
                if table:
                    print(table)
                tb = _tensorboard_logger(self.trainer)
                if tb is not None:
                    print(f"dse-monitor: logs in {tb.log_dir}  (tensorboard --logdir {tb.save_dir})")
                sys.stdout.flush()

    return DSEMonitorCLI


def _tensorboard_logger(trainer: Any) -> Any:
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger
    return None


def _names_a_model_class(args: Sequence[str]) -> bool:
    """Whether the configs or the arguments choose the model by ``class_path`` (e.g. ``SimCLRModule``)."""
    import yaml

    args = list(args)
    for i, arg in enumerate(args):
        if arg == "--model" or arg.startswith(("--model=", "--model.class_path")):
            return True
        path = None
        if arg == "--config" and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("--config="):
            path = arg.partition("=")[2]
        if path and Path(path).is_file():
            with open(path) as f:
                model = (yaml.safe_load(f) or {}).get("model")
            if isinstance(model, dict) and "class_path" in model:
                return True
    return False


def run_fit_cli(args: Sequence[str]) -> int:
    import lightning.pytorch as pl

    from .data import ImageDataModule
    from .model import ImageClassifier

    # ImageClassifier unless a config names another LightningModule by class_path (the
    # contrastive configs); the plain configs keep their flat `model:` section.
    subclass = _names_a_model_class(args)
    cli_cls = _cli_class("model.init_args" if subclass else "model")
    cli_cls(
        pl.LightningModule if subclass else ImageClassifier,
        ImageDataModule,
        subclass_mode_model=subclass,
        # None: LightningCLI reads sys.argv itself (it warns when given both).
        args=None if list(args) == sys.argv[1:] else list(args),
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
    return 0


# -------------------------------------------------------------------------------- sweep
def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """``["model.init_std=0.01,0.1"]`` -> ``{"model.init_std": ["0.01", "0.1"]}``.

    Example:
        >>> parse_grid(["model.init_std=0.01,0.1", "data.label_noise=none,permute"])
        {'model.init_std': ['0.01', '0.1'], 'data.label_noise': ['none', 'permute']}
    """
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip().lstrip("-")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not vals:
            raise ValueError(f"--grid wants KEY=V1,V2,... (e.g. model.init_std=0.01,0.1), got {spec!r}")
        if key in grid:
            raise ValueError(f"--grid names {key!r} twice")
        grid[key] = vals
    return grid


def _short(key: str, keys: Sequence[str]) -> str:
    tail = key.rsplit(".", 1)[-1]
    return tail if sum(k.rsplit(".", 1)[-1] == tail for k in keys) == 1 else key


def plan_sweep(grid: dict[str, list[str]], seeds: Sequence[int]) -> list[tuple[str, dict[str, str], int]]:
    """Every grid point times every seed: ``(run name, {key: value}, seed)``, in order.

    Example:
        >>> [name for name, _, _ in plan_sweep({"model.init_std": ["0.01", "0.1"]}, [1, 2])]
        ['init_std=0.01_seed=1', 'init_std=0.01_seed=2', 'init_std=0.1_seed=1', 'init_std=0.1_seed=2']
    """
    keys = list(grid)
    plan = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        for seed in seeds:
            name = "_".join([f"{_short(k, keys)}={v}" for k, v in point.items()] + [f"seed={seed}"])
            plan.append((name.replace("/", "-"), point, seed))
    return plan


def sweep_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dse-monitor sweep", allow_abbrev=False,
        description="Run `dse-monitor fit` over a grid of values and seeds, one run after another, "
                    "into one log root. Further --key value arguments are passed to every run.")
    parser.add_argument("--config", action="append", required=True, help="config file(s) for every run")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="a hyperparameter and its values (repeatable; the grid is their product)")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds (seed_everything), default 1")
    parser.add_argument("--root", default=None, help="log root (default runs/sweep_<config name>)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args, extra = parser.parse_known_args(list(argv))
    try:
        grid = parse_grid(args.grid)
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as err:
        parser.error(str(err))
    if not seeds:
        parser.error("--seeds needs at least one seed")
    root = Path(args.root or f"runs/sweep_{Path(args.config[0]).stem}")
    plan = plan_sweep(grid, seeds)
    root.mkdir(parents=True, exist_ok=True)
    print(f"dse-monitor sweep: {len(plan)} runs into {root}  (view: tensorboard --logdir {root})")
    results = []
    for i, (name, point, seed) in enumerate(plan, 1):
        cmd = [sys.executable, "-m", "dse_monitor.train.cli", "fit"]
        for c in args.config:
            cmd += ["--config", c]
        for k, v in point.items():
            cmd += [f"--{k}", v]
        cmd += ["--seed_everything", str(seed), "--trainer.default_root_dir", str(root / name)]
        cmd += list(extra)
        shown = ["dse-monitor", *cmd[3:]]  # what to type to rerun this one run by hand
        print(f"\n[sweep {i}/{len(plan)}] {name}\n  $ {shlex.join(shown)}", flush=True)
        if args.dry_run:
            continue
        start = time.perf_counter()
        try:
            rc = subprocess.call(cmd)
        except KeyboardInterrupt:
            print("sweep interrupted", file=sys.stderr)
            rc = 130
        seconds = time.perf_counter() - start
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"[sweep {i}/{len(plan)}] {name}: {status} in {seconds:.0f} s", flush=True)
        results.append({"name": name, "values": point, "seed": seed, "returncode": rc,
                        "seconds": round(seconds, 1), "command": shown})
        with open(root / "sweep.json", "w") as f:
            json.dump({"configs": args.config, "grid": grid, "seeds": seeds, "extra": extra, "runs": results}, f,
                      indent=1)
        if rc == 130:
            break
    if args.dry_run:
        return 0
    failed = [r["name"] for r in results if r["returncode"] != 0]
    print(f"\ndse-monitor sweep: {len(results) - len(failed)} of {len(plan)} runs finished in {root}")
    if failed:
        print("failed runs: " + ", ".join(failed))
    group = next(iter(grid), None)
    if group:
        print(f"compare them: dse-monitor compare {root} --metric dse,dsmi_y,dsmi_x --group-by {group}")
    return 1 if failed else 0


# ------------------------------------------------------------------------------ compare
def compare_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dse-monitor compare", allow_abbrev=False,
        description="Group runs by a hyperparameter and draw mean +/- std over seeds per epoch "
                    "(one panel per metric, validation accuracy beside them); also writes the curves as CSV.")
    parser.add_argument("root", help="log root holding the runs (searched recursively for event files)")
    parser.add_argument("--metric", action="append", default=None,
                        help="dse, dsmi_y, dsmi_x, cse, ... or a full tag like dse/penultimate/dse; "
                             "repeat or comma-separate for several panels (default dse,dsmi_y,dsmi_x)")
    parser.add_argument("--group-by", default="model.init_std", help="hyperparameter (dotted, as in the config)")
    parser.add_argument("--out", default=None, help="PNG path (default <root>/compare_<metric>.png)")
    parser.add_argument("--csv", default=None, help="CSV path (default: the PNG's with .csv)")
    parser.add_argument("--no-accuracy", action="store_true", help="leave out the accuracy panels")
    parser.add_argument("--plot", choices=("curves", "info-plane", "layers"), default="curves",
                        help="curves: metric vs epoch (default); info-plane: DSMI(Z;X) vs DSMI(Z;Y) per group; "
                             "layers: layers x measurements heat map at --epoch")
    parser.add_argument("--x", choices=("epoch", "step"), default="epoch",
                        help="x-axis of the curves: epochs (default) or the global step ending each epoch")
    parser.add_argument("--correlate", default=None, metavar="ACCURACY",
                        help="instead of plotting: Pearson/Spearman of each metric against val_acc or probe_acc "
                             "over all (run, epoch) points and per group; table and CSV")
    parser.add_argument("--layer", default=None, help="info-plane: the layer (<prefix>/<layer> or <layer>)")
    parser.add_argument("--epoch", type=int, default=None, help="layers: the epoch of the heat map (default last)")
    args = parser.parse_args(list(argv))
    metrics = [m.strip() for spec in (args.metric or ["dse,dsmi_y,dsmi_x"]) for m in spec.split(",") if m.strip()]
    from .analyses import correlate, info_plane, layer_heatmap
    from .compare import compare

    try:
        if args.correlate:
            correlate(args.root, metrics, args.correlate, args.group_by, csv_path=args.csv)
        elif args.plot == "info-plane":
            info_plane(args.root, args.group_by, layer=args.layer, out=args.out, csv_path=args.csv)
        elif args.plot == "layers":
            layer_heatmap(args.root, metrics, args.group_by, epoch=args.epoch, out=args.out, csv_path=args.csv)
        else:
            compare(args.root, metrics, args.group_by, out=args.out, csv_path=args.csv,
                    accuracy=None if args.no_accuracy else "val_acc,probe_acc", x=args.x)
    except (FileNotFoundError, ValueError) as err:
        print(f"dse-monitor compare: {err}", file=sys.stderr)
        return 2
    return 0


# --------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(OVERVIEW)
        return 0 if argv else 2
    if argv[0] == "sweep":
        return sweep_main(argv[1:])
    if argv[0] == "compare":
        return compare_main(argv[1:])
    if argv[0] == "score":
        from .score_cli import score_main

        return score_main(argv[1:])
    return run_fit_cli(argv)


if __name__ == "__main__":
    sys.exit(main())
