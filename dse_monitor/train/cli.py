"""The ``dse-monitor`` command: ``fit`` (LightningCLI), ``sweep``, ``compare`` and ``score``.

    dse-monitor fit --config configs/digits.yaml [--model.init_std 0.01 --seed_everything 2 ...]
    dse-monitor sweep --config configs/digits.yaml --grid model.init_std=0.01,0.1 --seeds 1,2,3 [--root runs/init] [--key value ...]
    dse-monitor compare runs/init --metric dse --group-by model.init_std [--out fig.png]
    dse-monitor score runs/init/*/lightning_logs/*/checkpoints/*.ckpt --config configs/digits.yaml --out scores

The subcommands are argparse subparsers (:func:`build_parser`). ``fit``, ``validate``,
``test`` and ``score`` take their arguments as they are: LightningCLI parses those of
``fit`` (see :mod:`~dse_monitor.train.fit`), :mod:`~dse_monitor.train.score_cli` those of
``score``. ``dse-monitor --debug COMMAND ...`` shows the traceback of a configuration error.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

from .summary import format_run_table, run_table

__all__ = ["build_parser", "format_run_table", "main", "run_table"]

EXAMPLES = """examples:
  dse-monitor fit --config configs/digits.yaml --model.init_std 0.01 --seed_everything 2 --trainer.max_epochs 5
  dse-monitor sweep --config configs/digits.yaml --grid model.init_std=0.01,0.1 --seeds 1,2,3 --root runs/init
  dse-monitor compare runs/init --metric dse --group-by model.init_std --out init.png
      [--x step] [--plot info-plane | --plot layers] [--correlate val_acc]
  dse-monitor score runs/init/*/lightning_logs/*/checkpoints/*.ckpt --config configs/digits.yaml --out scores
  dse-monitor report runs/digits [--out report.html]
"""

#: A subcommand's handler: ``(parsed arguments, the arguments it did not parse) -> exit status``
Handler = Callable[[argparse.Namespace, list], int]


def add_command(commands: Any, name: str, handler: Handler, help: str, passthrough: bool = False,
                extra: bool = False, **kwargs: Any) -> argparse.ArgumentParser:
    """Register a subcommand; add its options to the returned parser.

    ``handler(args, rest)`` runs it and returns the exit status. ``passthrough``: the
    command parses its own arguments (all of them are ``rest``); ``extra``: it takes
    further arguments beyond its options (``rest``); else an unknown argument is a usage
    error. ``args.parser`` is the subcommand's parser (for ``args.parser.error``).
    """
    parser = commands.add_parser(name, help=help, add_help=not passthrough, allow_abbrev=False, **kwargs)
    parser.set_defaults(handler=handler, parser=parser, takes_rest=passthrough or extra)
    return parser


def _fit(args: argparse.Namespace, extra: list) -> int:
    from .fit import run_fit

    return run_fit([args.command, *extra], debug=args.debug)


def _sweep(args: argparse.Namespace, extra: list) -> int:
    from .sweep import run_sweep

    return run_sweep(args, extra, args.parser)


def _compare(args: argparse.Namespace, extra: list) -> int:
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


def _add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", help="log root holding the runs (searched recursively for event files)")
    p.add_argument("--metric", action="append", default=None,
                   help="dse, dsmi_y, dsmi_x, cse, ... or a full tag like dse/penultimate/dse; "
                        "repeat or comma-separate for several panels (default dse,dsmi_y,dsmi_x)")
    p.add_argument("--group-by", default=None,
                   help="hyperparameter (dotted, as in the config, e.g. model.init_std); default: all runs together")
    p.add_argument("--out", default=None, help="PNG path (default <root>/compare_<metric>.png)")
    p.add_argument("--csv", default=None, help="CSV path (default: the PNG's with .csv)")
    p.add_argument("--no-accuracy", action="store_true", help="leave out the accuracy panels")
    p.add_argument("--plot", choices=("curves", "info-plane", "layers"), default="curves",
                   help="curves: metric vs epoch (default); info-plane: DSMI(Z;X) vs DSMI(Z;Y) per group; "
                        "layers: a layers x metrics heat map at --epoch")
    p.add_argument("--x", choices=("epoch", "step"), default="epoch",
                   help="x-axis of the curves: epochs (default) or the global step ending each epoch")
    p.add_argument("--correlate", default=None, metavar="ACCURACY",
                   help="instead of plotting: Pearson/Spearman of each metric against val_acc or probe_acc "
                        "over all (run, epoch) points and per group; table and CSV")
    p.add_argument("--layer", default=None, help="info-plane: the layer (<prefix>/<layer> or <layer>)")
    p.add_argument("--epoch", type=int, default=None, help="layers: the epoch of the heat map (default last)")


def _score(args: argparse.Namespace, extra: list) -> int:
    from .score_cli import score_main

    return score_main(extra)


def _report(args: argparse.Namespace, extra: list) -> int:
    from .report import main as report_main

    return report_main(extra)


def build_parser() -> argparse.ArgumentParser:
    """The ``dse-monitor`` parser, one subparser per subcommand (each with its ``handler``)."""
    parser = argparse.ArgumentParser(
        prog="dse-monitor", allow_abbrev=False, add_help=False, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train with DSE/DSMI monitoring, run sweeps, compare runs, score models. "
                    "`dse-monitor COMMAND --help` lists a command's options.")
    parser.add_argument("-h", "--help", action="store_true", help="show this overview")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a configuration error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_command(commands, "fit", _fit, passthrough=True,
                help="train with DSE/DSMI monitoring (LightningCLI): dse-monitor fit --config configs/digits.yaml "
                     "[--model.init_std 0.01 --trainer.max_epochs 5 ...]")
    add_command(commands, "validate", _fit, passthrough=True, help="LightningCLI's validate")
    add_command(commands, "test", _fit, passthrough=True, help="LightningCLI's test")
    sweep = add_command(commands, "sweep", _sweep, extra=True,
                        help="a grid of fits into one log root: --config C --grid model.init_std=0.01,0.1 --seeds 1,2",
                        description="Run `dse-monitor fit` over a grid of values and seeds, one run after another, "
                                    "into one log root. Further --key value arguments are passed to every run.")
    from .sweep import add_sweep_arguments

    add_sweep_arguments(sweep)
    compare = add_command(commands, "compare", _compare,
                          help="mean +/- std over seeds per epoch, grouped by a hyperparameter (PNG, CSV, table)",
                          description="Group runs by a hyperparameter and draw mean +/- std over seeds per epoch "
                                      "(one panel per metric, validation accuracy beside them); also writes the "
                                      "curves as CSV.")
    _add_compare_arguments(compare)
    add_command(commands, "score", _score, passthrough=True,
                help="rank models by DSE/DSMI on one probe set, correlated with accuracy")
    add_command(commands, "report", _report, passthrough=True,
                help="one HTML page of a run (curves, heat maps, spectrum, settings, warnings): "
                     "dse-monitor report RUN_DIR [--out FILE]")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dse-monitor ARGV``; returns the exit status (the overview: 0 with --help, 2 without a command)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        parser.print_help()
        return 0 if args.help else 2
    if extra and not args.takes_rest:
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.handler(args, extra)


if __name__ == "__main__":
    sys.exit(main())
