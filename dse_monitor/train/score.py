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

import gc
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import torch
from torch import nn

from ..monitor import Measurement, MonitorConfig, ReferenceGroups, measure
from ..monitor.collect import MissingLabelsError
from ..monitor.config import check_sigma, check_t
from ..registry import DEFAULT_METRICS, logged_names
from .score_models import expand_models, load_model, parse_model
from .score_probe import Probe, ProbeAccuracy, build_probe
from .score_report import (
    ScoresFile,
    check_settings,
    correlations,
    format_correlations,
    format_header,
    format_row,
    read_accuracy_file,
    write_correlations,
    write_failures,
    write_scatter,
)

__all__ = ["ScoreFailedWarning", "ScoreRows", "ScoreSettings", "ScoreWarning", "score"]

ModelArg = Union[str, "tuple[str, nn.Module]"]
SPLITS = ("val", "train", "test")
#: score measures each model once: the monitor's policy for a run's later measurements does not apply.
MEDIAN_INIT_REFUSED = (
    "sigma='median_init' freezes the median bandwidth of a run's first measurement for its later "
    "ones; score measures each model once, so it would be 'median' (each model's own median) "
    "or the first model's median imposed on all (a ranking that depends on the order). Use "
    "'median', 'sqrt_dim' (the paper's choice here) or a number shared by every model."
)


class ScoreWarning(UserWarning):
    """A model was moved to the CPU after running out of GPU memory."""


class ScoreFailedWarning(ScoreWarning):
    """A model could not be scored (it is left out; the others go on)."""


class ScoreRows(list):
    """The rows of :func:`score` (dicts, one per model scored on this probe), plus ``failed``: {model: error}."""

    failed: dict[str, str]


@dataclass(frozen=True)
class ScoreSettings:
    """Everything that makes two rows comparable: the split and the monitor's settings (its validation,
    with sigma a number, ``"sqrt_dim"`` or ``"median"`` and t a number); recorded in every row.

    >>> ScoreSettings.of(sigma=10).record()["sigma"], ScoreSettings.of().record()["n_clusters"]
    ('10.0', 'classes')
    """

    split: str
    config: MonitorConfig

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be 'val', 'train' or 'test', got {self.split!r}")
        check_sigma(self.config.sigma, ("sqrt_dim", "median"), refused={"median_init": MEDIAN_INIT_REFUSED})
        check_t(self.config.t, policies=())

    @classmethod
    def of(cls, split: str = "val", *, sigma: Union[float, str] = "sqrt_dim", dtype: str = "float64",
           **settings: Any) -> "ScoreSettings":
        """The settings of ``score``: the penultimate layer, its defaults (sqrt(D), float64), the rest as given."""
        return cls(split, MonitorConfig(layers="penultimate", sigma=sigma, dtype=dtype, **settings))

    @property
    def columns(self) -> list[str]:
        """The names each model's row holds: every logged name of every metric (``alpha_req_r2``, ``dse_t<t>``)."""
        settings = self.config.settings()
        # each name once: alpha_req also logs alpha_req_r2, which may be asked for itself
        return list(dict.fromkeys(name for metric in self.config.metrics for name in logged_names(metric, settings)))

    def record(self) -> dict[str, str]:
        """The settings as the strings written to (and compared in) ``scores.csv``."""
        c = self.config
        return {
            "split": self.split,
            "num_samples": "all" if c.num_samples is None else str(c.num_samples),
            "seed": str(c.seed),
            "sigma": c.sigma if isinstance(c.sigma, str) else repr(float(c.sigma)),
            "t": repr(float(c.t)),
            "n_clusters": "classes" if c.n_clusters is None else str(c.n_clusters),
            "x_size": "none" if c.x_size is None else str(c.x_size),
            "metrics": "+".join(c.metrics),
            "dtype": str(c.dtype).replace("torch.", ""),
            "num_repetitions": str(c.num_repetitions),
        }


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _measure(model: nn.Module, probe: Probe, config: MonitorConfig, device: torch.device,
             groups: ReferenceGroups | None) -> tuple[Measurement, float | None]:
    """One model on ``device``: the monitor's measurement and the probe accuracy (None when the head does not match)."""
    model.to(device)
    accuracy = ProbeAccuracy(probe.num_classes)
    measurement = measure(model, probe.source, config, indices=probe.indices, groups=groups, on_output=accuracy)
    return measurement, accuracy.value()


def _metric_notes(measurement: Measurement, layer: str, metrics: Sequence[str]) -> dict[str, str]:
    """``{metric: line}``: the note a metric's result gave (why its value is NaN or not logged), which the
    measurement keeps among its ``info`` lines as ``"DSEMonitor: <metric> of layer '<layer>': <note>."``."""
    out = {}
    for metric in metrics:
        head = f"DSEMonitor: {metric} of layer {layer!r}: "
        out.update({metric: line for line in measurement.info if line.startswith(head)})
    return out


def _values(measurement: Measurement, settings: ScoreSettings) -> tuple[str, dict[str, float | None], list[str]]:
    """The layer, its value of each column (None: not measurable, e.g. no X for token ids) and the notes.

    A value that is NaN for a reason its metric gave (a note: e.g. alpha-ReQ of a spectrum with zeros in
    its fit range) is kept, the reason among the notes. A metric that failed, features with NaN/Inf
    entries or a NaN without a reason fail the model: no row is better than a wrong one.
    """
    layer = next(iter(measurement.shapes))
    failures = measurement.failures.get(layer)
    if failures:
        raise RuntimeError("; ".join(f"computing {name} failed ({reason})" for name, reason in failures.items()))
    measured = measurement.of_layer(layer)
    values = {name: measured.get(name) for name in settings.columns}
    explained = _metric_notes(measurement, layer, settings.config.metrics)
    config_settings = settings.config.settings()
    reasoned = {name for metric in explained for name in logged_names(metric, config_settings)}
    unexplained = [name for name, v in values.items() if v is not None and math.isnan(v) and name not in reasoned]
    if unexplained:
        if layer not in measurement.sigmas:  # NaN/Inf features: the measurement stopped before the scale
            raise ValueError(f"the {layer} features have NaN/Inf entries (a broken checkpoint?); no score")
        raise ValueError(f"{', '.join(unexplained)} of the {layer} features came out NaN with no reason given; "
                         "no score")
    notes = [n.removeprefix("DSEMonitor: ") for n in (*measurement.notes, *explained.values(), *measurement.fallbacks)]
    return layer, values, notes


def _score_one(spec_text: str, module: nn.Module | None, probe: Probe, settings: ScoreSettings,
               device: torch.device, model_class: Any,
               groups: ReferenceGroups | None) -> tuple[dict[str, Any], ReferenceGroups | None]:
    """One row, and the reference groups (labels, input clusters) for the next models."""
    start = time.perf_counter()
    kind = "module" if module is not None else parse_model(spec_text).kind
    model = module if module is not None else load_model(spec_text, model_class)
    home = next(iter(model.parameters()), torch.empty(0)).device  # a given module goes back where it was
    used = device
    try:
        try:
            measurement, acc = _measure(model, probe, settings.config, device, groups)
        except Exception as err:  # noqa: BLE001 - out of memory on the GPU: the CPU has more
            if device.type != "cuda" or not _is_out_of_memory(err):
                raise
            warnings.warn(f"score: {spec_text} ran out of GPU memory ({err}); retrying on the CPU.",
                          ScoreWarning, stacklevel=3)
            torch.cuda.empty_cache()
            used = torch.device("cpu")
            measurement, acc = _measure(model, probe, settings.config, used, groups)
    finally:
        if module is not None:
            module.to(home)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    layer, values, notes = _values(measurement, settings)
    n, dim = measurement.shapes[layer]
    row: dict[str, Any] = {"model": spec_text, "kind": kind, "accuracy": acc,
                           "accuracy_source": "probe" if acc is not None else "none", **values,
                           "n": n, "dim": dim, "sigma_value": measurement.sigmas.get(layer),
                           "device": used.type, "seconds": round(time.perf_counter() - start, 2),
                           "note": "; ".join(notes)}
    return row, measurement.groups


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
    device = torch.device(device) if device is not None else _default_device()
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
            row, groups = _score_one(name, module, probe, settings, device, model_class, groups)
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
