"""``dse-monitor score MODEL [MODEL ...] --config CONFIG --out DIR [--data.KEY VALUE ...]``.

The data come from the ``data:`` section of a fit config (the main job's
:class:`~dse_monitor.train.data.ImageDataModule`, its ``model.in_chans`` too),
overridable with ``--data.KEY VALUE`` as in ``dse-monitor fit``.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

__all__ = ["build_datamodule", "score_main", "split_data_arguments"]


def split_data_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(other arguments, --data.* arguments)``: the data ones go to the data module's parser.

    >>> split_data_arguments(["a.ckpt", "--data.image_size", "16", "--out", "o", "--data.batch_size=8"])
    (['a.ckpt', '--out', 'o'], ['--data.image_size', '16', '--data.batch_size=8'])
    """
    rest, data, items = [], [], list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg.startswith("--data."):
            data.append(arg)
            if "=" not in arg and i + 1 < len(items):
                data.append(items[i + 1])
                i += 1
        else:
            rest.append(arg)
        i += 1
    return rest, data


def build_datamodule(config: str | None, data_args: Sequence[str]) -> Any:
    """The ImageDataModule of the ``data:`` section of ``config`` with ``--data.*`` overrides applied."""
    import yaml
    from jsonargparse import ArgumentParser

    from .data import ImageDataModule

    section: dict[str, Any] = {}
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config {path} not found")
        tree = yaml.safe_load(path.read_text()) or {}
        section = dict(tree.get("data") or {})
        if "class_path" in section:
            if section["class_path"].rsplit(".", 1)[-1] != "ImageDataModule":
                raise ValueError(f"{path}: score reads the main job's ImageDataModule; data.class_path is "
                                 f"{section['class_path']!r} (use the Python API dse_monitor.score for other modules)")
            section = dict(section.get("init_args") or {})
        in_chans = (tree.get("model") or {}).get("in_chans")
        if in_chans is not None and "in_chans" not in section:  # fit links model.in_chans -> data.in_chans
            section["in_chans"] = in_chans
    parser = ArgumentParser(prog="dse-monitor score (data)", exit_on_error=False)
    parser.add_class_arguments(ImageDataModule, "data")
    parser.set_defaults({f"data.{k}": v for k, v in section.items()})
    cfg = parser.parse_args(list(data_args))
    return parser.instantiate_classes(cfg).data


def _sigma(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dse-monitor score", allow_abbrev=False,
        description="Score models on one fixed probe set: DSE(Z), DSMI(Z;Y), DSMI(Z;X) of the penultimate layer, "
                    "accuracy, and the correlation of each metric with accuracy (the paper's cross-model study). "
                    "--data.KEY VALUE overrides the config's data section.")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="a checkpoint (.ckpt), timm:NAME or torchvision:NAME (weights from the local cache, or "
                        "NAME=FILE), or a text file of MODEL lines")
    p.add_argument("--config", default=None, help="a fit config; its data: section defines the probe data")
    p.add_argument("--out", required=True, help="folder for scores.csv, correlation.csv, scores.png")
    p.add_argument("--split", default="val", choices=("val", "train", "test"), help="probe split (default val)")
    p.add_argument("--num-samples", default="1000", help="probe size (default 1000; 'all': the whole split)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe subset, the subsets and the clusters")
    p.add_argument("--sigma", type=_sigma, default="sqrt_dim",
                   help="kernel bandwidth: sqrt_dim (default, the paper's study), median, or a number")
    p.add_argument("--t", type=float, default=1.0, help="diffusion time (default 1)")
    p.add_argument("--n-clusters", type=int, default=None, help="input clusters for DSMI(Z;X) (default: classes)")
    p.add_argument("--x-size", default="64", help="inputs resized to this size before clustering ('none': as is)")
    p.add_argument("--metrics", default="dse,dsmi_y,dsmi_x", help="comma-separated, e.g. dse,dsmi_y,dsmi_x,cse,csmi_y")
    p.add_argument("--dtype", default="float64", choices=("float32", "float64"), help="compute dtype")
    p.add_argument("--num-repetitions", type=int, default=5, help="random subsets per group in DSMI (default 5)")
    p.add_argument("--accuracy", default=None, metavar="FILE.csv",
                   help="CSV with model and accuracy columns (e.g. published top-1), used over the probe accuracy")
    p.add_argument("--device", default=None, help="cpu or cuda (default cuda when available)")
    p.add_argument("--batch-size", type=int, default=None, help="probe batch size (default the data's)")
    p.add_argument("--group-by", default=None,
                   help="colour the points of scores.png by this hyperparameter of each checkpoint's run "
                        "(dotted, as in `dse-monitor compare`, e.g. data.label_noise)")
    p.add_argument("--model-class", default=None,
                   help="LightningModule class of the checkpoints (default dse_monitor.train.model.ImageClassifier)")
    return p


def score_main(argv: Sequence[str]) -> int:
    rest, data_args = split_data_arguments(argv)
    parser = _parser()
    args = parser.parse_args(rest)
    from .score import ScoreFailedWarning, score

    try:
        datamodule = build_datamodule(args.config, data_args)
        num_samples = None if args.num_samples.lower() == "all" else int(args.num_samples)
        x_size = None if args.x_size.lower() == "none" else int(args.x_size)
    except Exception as err:  # noqa: BLE001 - a configuration error: say it and stop
        print(f"dse-monitor score: {err}", file=sys.stderr)
        return 2
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    print(f"dse-monitor score: {len(args.models)} MODEL argument(s) -> {args.out}", flush=True)
    with warnings.catch_warnings():
        # a failed model is reported once below, with its error; the warning would say it twice
        warnings.simplefilter("ignore", ScoreFailedWarning)
        try:
            rows = score(args.models, datamodule, args.out, split=args.split, num_samples=num_samples,
                         seed=args.seed, sigma=args.sigma, t=args.t, n_clusters=args.n_clusters, x_size=x_size,
                         metrics=metrics, dtype=args.dtype, num_repetitions=args.num_repetitions,
                         accuracy=args.accuracy, device=args.device, batch_size=args.batch_size,
                         model_class=args.model_class)
        except (ValueError, FileNotFoundError, TypeError) as err:
            print(f"dse-monitor score: {err}", file=sys.stderr)
            return 2
    out = Path(args.out)
    if args.group_by is not None:
        _redraw_grouped(out, metrics, args.group_by)
    if rows:
        print(f"dse-monitor score: {len(rows)} of the given models are in {out / 'scores.csv'}; "
              f"{out / 'correlation.csv'} and {out / 'scores.png'} cover every model there")
    else:
        print(f"dse-monitor score: no model could be scored; {out / 'failures.csv'} says why")
    if rows.failed:
        print(f"dse-monitor score: {len(rows.failed)} model(s) failed (listed in {out / 'failures.csv'}; "
              "a rerun retries them):", file=sys.stderr)
        for name, error in rows.failed.items():
            print(f"  {name}: {error}", file=sys.stderr)
        return 1
    return 0


def _redraw_grouped(out: Path, metrics: Sequence[str], group_by: str) -> None:
    """``scores.png`` of every model in ``scores.csv``, the points coloured by ``group_by``."""
    from .score_file import ScoresFile
    from .score_report import correlations, write_scatter

    every = ScoresFile(out / "scores.csv").read()
    write_scatter(every, correlations(every, metrics), metrics, out / "scores.png", group_by=group_by)
