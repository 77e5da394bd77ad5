"""Score many models on one probe set: the paper's cross-model study as a tool.

For each model, one at a time, on one fixed, seeded probe subset of a split: the
monitor's own measurement (:func:`dse_monitor.measure`: load model -> measure -> write a
row) of the penultimate layer, DSE(Z), DSMI(Z;Y), DSMI(Z;X) (the probe inputs clustered
once, at the first model, for all) and any other metric of the registry, with the
model's accuracy on the probe when its head has one output per class. The paper (about 960 timm models, 1,000 ImageNet images)
found DSMI(Z;Y) correlated with top-1 accuracy (Pearson 0.22, Spearman 0.14).

Defaults follow that study: ``sigma="sqrt_dim"`` (sqrt(D) of each model's features)
and as many input clusters as classes. Results go to ``out/scores.csv`` as each model
finishes; a rerun skips the models already there and refuses changed settings.

Example (two tiny untrained networks on random data, no files written):
    >>> import torch
    >>> from torch import nn
    >>> from torch.utils.data import TensorDataset
    >>> g = torch.Generator().manual_seed(0)
    >>> data = TensorDataset(torch.randn(60, 4, generator=g), torch.arange(60) % 3)
    >>> nets = [(f"net{i}", nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))) for i in range(2)]
    >>> rows = score(nets, data, metrics=["dse", "dsmi_y"], x_size=None, progress=False)
    >>> [(r["model"], r["n"], r["dim"], 0 <= r["dse"] <= 5.91, r["accuracy_source"]) for r in rows]
    [('net0', 60, 8, True, 'probe'), ('net1', 60, 8, True, 'probe')]
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence, Union

import torch
from torch import nn

from ..monitor.collect import MissingLabelsError
from ..registry import DEFAULT_METRICS
from .score_measure import ScoreFailedWarning, ScoreWarning, default_device, score_one
from .score_models import expand_models, parse_model
from .score_probe import build_probe
from .score_file import ScoresFile, check_settings, read_accuracy_file
from .score_report import (
    correlations,
    format_correlations,
    format_header,
    format_row,
    write_correlations,
    write_failures,
    write_scatter,
)
from .score_settings import ScoreSettings

__all__ = ["ScoreFailedWarning", "ScoreRows", "ScoreSettings", "ScoreWarning", "score"]

ModelArg = Union[str, "tuple[str, nn.Module]"]


class ScoreRows(list):
    """The rows of :func:`score` (dicts, one per model scored on this probe), plus ``failed``: {model: error}."""

    failed: dict[str, str]


def _model_items(models: Sequence[ModelArg]) -> list[tuple[str, nn.Module | None]]:
    """``(name, module or None)`` in the given order; list files expanded, repeated MODEL strings dropped."""
    items: list[tuple[str, nn.Module | None]] = []
    for m in [models] if isinstance(models, str) else models:
        if isinstance(m, str):
            items.extend((text, None) for text in expand_models([m]) if all(text != n for n, _ in items))
        elif isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], str) and isinstance(m[1], nn.Module):
            if any(m[0] == n for n, _ in items):
                raise ValueError(f"two models are named {m[0]!r}; give each (name, module) pair its own name")
            items.append(m)
        else:
            raise TypeError(f"a model is a MODEL string or a (name, nn.Module) pair, got {type(m).__name__}")
    if not items:
        raise ValueError("no models to score")
    return items


def score(
    models: Sequence[ModelArg],
    datamodule: Any,
    out: str | Path | None = None,
    *,
    split: str = "val",
    num_samples: int | None = 1000,
    seed: int = 0,
    sigma: Union[float, str] = "sqrt_dim",
    t: float = 1.0,
    n_clusters: int | None = None,
    x_size: int | None = 64,
    metrics: Sequence[str] = DEFAULT_METRICS,
    dtype: str = "float64",
    num_repetitions: int = 5,
    accuracy: str | Path | dict[str, float] | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    model_class: str | type | None = None,
    progress: bool = True,
) -> ScoreRows:
    """Score each model on one probe subset; return one row (dict) per model.

    Per model, :func:`dse_monitor.measure` (the callback's measurement, with Z the
    penultimate features [N, D] on the probe):

        DSE(Z) = -sum_i a_i log2 a_i,  a_i = |lambda_i|^t / sum_j |lambda_j|^t  (diffusion spectrum)
        DSMI(Z; B) = sum_b p(b) [ mean_r DSE(Z_r^(b)) - DSE(Z | B = b) ],  B = labels Y or input clusters X

    and, over the models, Pearson's r and Spearman's rho of each metric against accuracy.
    Example: see the module docstring.

    Args:
        models: MODEL strings (see :mod:`~dse_monitor.train.score_models`: checkpoints,
            ``timm:NAME``, ``torchvision:NAME``, list files) or ``(name, nn.Module)`` pairs.
        datamodule: a LightningDataModule (its ``<split>_dataloader()``), a map-style
            Dataset or a DataLoader, with any batch the monitor reads (``(x, y)`` tuples,
            image dicts, Hugging Face ``BatchEncoding`` batches: see
            :func:`~dse_monitor.capture.split_batch`).
        out: folder for ``scores.csv`` (appended as each model finishes; a rerun skips
            the models in it and refuses changed settings), ``correlation.csv`` and
            ``scores.png`` (over every model in ``scores.csv``); None writes nothing.
        split, num_samples, seed: the probe: ``choose_indices(len(split), num_samples, seed)``.
        sigma: ``"sqrt_dim"`` (sqrt(D), the paper's choice), ``"median"`` or a number.
        t, num_repetitions, dtype: as in the monitor.
        n_clusters: clusters of the inputs for DSMI(Z;X); None: the number of classes.
        x_size: inputs resized to ``x_size x x_size`` before clustering (None: as they are).
        metrics: names from :data:`dse_monitor.registry.METRICS` (a metric that cannot be measured on
            these batches, e.g. DSMI(Z;X) of token ids, is left empty with a note).
        accuracy: a CSV (``model`` and a column naming ``acc``) or a dict: the accuracy
            of a model (e.g. published top-1), preferred over the probe accuracy.
        device: where the models run (default CUDA when available); a model that runs
            out of GPU memory is retried on the CPU.
        model_class: LightningModule class (or its import path) of the checkpoints
            (default :class:`~dse_monitor.train.model.ImageClassifier`).

    A model that fails is reported (a :class:`ScoreFailedWarning`) and the others go on; the
    failures are in ``rows.failed``. Each row holds ``model``, ``accuracy``,
    ``accuracy_source`` (probe, file, none), the metrics in bits, ``n``, ``dim``,
    ``sigma_value`` and the settings.
    """
    settings = ScoreSettings.of(split, num_samples=num_samples, seed=seed, sigma=sigma, t=t, n_clusters=n_clusters,
                                x_size=x_size, metrics=metrics, dtype=dtype, num_repetitions=num_repetitions,
                                batch_size=batch_size)
    metrics = settings.columns
    items = _model_items(models)
    given_acc = read_accuracy_file(accuracy) if isinstance(accuracy, (str, Path)) else dict(accuracy or {})
    device = torch.device(device) if device is not None else default_device()
    record = settings.record()
    scores = ScoresFile(Path(out) / "scores.csv", settings.config.settings()) if out is not None else None
    previous = scores.read() if scores is not None else []
    check_settings(previous, record, scores.path if scores else None)  # before reading the probe
    probe = build_probe(datamodule, split, settings.config)
    record = {**record, **probe.record()}
    check_settings(previous, record, scores.path if scores else None)
    if progress:
        print(f"score: probe = {len(probe.indices)} samples of the {split} split (seed {seed}); "
              f"sigma = {sigma}, t = {t:g}")
    done = {r["model"]: r for r in previous}
    rows, failed, groups = ScoreRows(), {}, None
    todo = [(name, module) for name, module in items if name not in done]
    if progress and len(todo) < len(items):
        print(f"score: {len(items) - len(todo)} of {len(items)} models already in {scores.path}; skipping them")
    bar = _progress(todo, progress)
    if progress and todo:
        _write(bar, format_header(metrics))
    for name, module in bar:
        try:
            row, groups = score_one(name, module, probe, settings, device, model_class, groups)
        except MissingLabelsError:  # the probe's fault, not the model's: the same for every model
            raise
        except Exception as err:  # noqa: BLE001 - one bad model never stops the others
            failed[name] = f"{type(err).__name__}: {err}"
            warnings.warn(f"score: {name} failed ({failed[name]}); going on with the others.", ScoreFailedWarning,
                          stacklevel=2)
            if progress:
                _write(bar, f"{name}  FAILED: {failed[name]}")
            continue
        acc = given_acc.get(name, given_acc.get(parse_model(name).name if module is None else name))
        if acc is not None:
            row["accuracy"], row["accuracy_source"] = float(acc), "file"
        row.update(record)
        done[name] = row
        if scores is not None:
            scores.append(row)
        if progress:
            _write(bar, format_row(row, metrics))
    rows.extend(done[name] for name, _ in items if name in done)
    rows.failed = failed
    if progress and len(rows) > len(todo) - len(failed):  # some came from scores.csv: show them all
        print("\n".join([f"all {len(rows)} models:", format_header(metrics),
                         *(format_row(r, metrics) for r in rows)]))
    if out is not None:  # the files describe every model of scores.csv, also those of earlier runs
        _write_files(Path(out), list(done.values()), failed, metrics, progress)
    return rows


def _write_files(out: Path, every: list[dict[str, Any]], failed: dict[str, str], metrics: Sequence[str],
                 progress: bool) -> None:
    """``correlation.csv``, ``scores.png`` and ``failures.csv`` in ``out``; the correlations printed too."""
    table = correlations(every, metrics)
    write_correlations(table, out / "correlation.csv")
    write_scatter(every, table, metrics, out / "scores.png")
    write_failures(failed, out / "failures.csv")
    if progress:
        print(format_correlations(table))


def _progress(todo: list, enabled: bool):
    if not enabled:
        return todo
    from tqdm.auto import tqdm

    return tqdm(todo, desc="score", unit="model", leave=True)


def _write(bar: Any, line: str) -> None:
    writer = getattr(bar, "write", None)
    (writer or print)(line)
