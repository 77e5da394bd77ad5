"""Score many models on one probe set: the paper's cross-model study as a tool.

For each model, one at a time, on one fixed, seeded probe subset of a split: the
penultimate features (the monitor's layer lookup, hooks and pooling), then DSE(Z),
DSMI(Z;Y), DSMI(Z;X) (the probe inputs clustered once for all models) and optionally
CSE/CSMI through the metric registry, with the model's accuracy on the probe when its
head has one output per class. The paper (about 960 timm models, 1,000 ImageNet images)
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

from ..capture import FeatureCapture, eval_mode, resolve_layer, to_device, unpack_batch
from ..functional import resolve_sigma
from ..registry import DEFAULT_METRICS, METRICS, MetricSettings, logged_names
from .score_models import expand_models, load_model, parse_model
from .score_probe import Probe, build_probe
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
SIGMA_POLICIES = ("sqrt_dim", "median")


class ScoreWarning(UserWarning):
    """A model was moved to the CPU after running out of GPU memory."""


class ScoreFailedWarning(ScoreWarning):
    """A model could not be scored (it is left out; the others go on)."""


class ScoreRows(list):
    """The rows of :func:`score` (dicts, one per model scored on this probe), plus ``failed``: {model: error}."""

    failed: dict[str, str]


@dataclass(frozen=True)
class ScoreSettings:
    """Everything that makes two rows comparable; recorded in every row and checked on a rerun."""

    split: str = "val"
    num_samples: int | None = 1000
    seed: int = 0
    sigma: Union[float, str] = "sqrt_dim"
    t: float = 1.0
    n_clusters: int | None = None
    x_size: int | None = 64
    metrics: tuple[str, ...] = DEFAULT_METRICS
    dtype: str = "float64"
    num_repetitions: int = 5

    def __post_init__(self) -> None:
        if self.split not in ("val", "train", "test"):
            raise ValueError(f"split must be 'val', 'train' or 'test', got {self.split!r}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if not self.metrics or unknown or len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"metrics must be distinct names among {tuple(METRICS)}, got {list(self.metrics)}")
        check_sigma(self.sigma)
        if isinstance(self.t, bool) or not isinstance(self.t, (int, float)) or not self.t > 0:
            raise ValueError(f"t must be a positive number, got {self.t!r}")
        for name in ("num_samples", "n_clusters", "x_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")

    def record(self) -> dict[str, str]:
        """The settings as the strings written to (and compared in) ``scores.csv``.

        >>> ScoreSettings(sigma=10).record()["sigma"], ScoreSettings().record()["n_clusters"]
        ('10.0', 'classes')
        """
        return {
            "split": self.split,
            "num_samples": "all" if self.num_samples is None else str(self.num_samples),
            "seed": str(self.seed),
            "sigma": self.sigma if isinstance(self.sigma, str) else repr(float(self.sigma)),
            "t": repr(float(self.t)),
            "n_clusters": "classes" if self.n_clusters is None else str(self.n_clusters),
            "x_size": "none" if self.x_size is None else str(self.x_size),
            "metrics": "+".join(self.metrics),
            "dtype": self.dtype,
            "num_repetitions": str(self.num_repetitions),
        }


def check_sigma(sigma: Any) -> Union[float, str]:
    """A positive number, ``"sqrt_dim"`` or ``"median"``; ``"median_init"`` is refused with the reason.

    >>> check_sigma("sqrt_dim"), check_sigma(2)
    ('sqrt_dim', 2)
    """
    if isinstance(sigma, str):
        if sigma in SIGMA_POLICIES:
            return sigma
        if sigma == "median_init":
            raise ValueError(
                "sigma='median_init' freezes the median bandwidth of a run's first measurement for its later "
                "ones; score measures each model once, so it would be 'median' (each model's own median) "
                "or the first model's median imposed on all (a ranking that depends on the order). Use "
                "'median', 'sqrt_dim' (the paper's choice here) or a number shared by every model."
            )
    elif not isinstance(sigma, bool) and isinstance(sigma, (int, float)) and sigma > 0 and math.isfinite(sigma):
        return sigma
    raise ValueError(f"sigma must be a positive number, 'sqrt_dim' or 'median', got {sigma!r}")


def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _features_and_accuracy(model: nn.Module, probe: Probe, device: torch.device) -> tuple[torch.Tensor, float | None]:
    """Penultimate features [N, D] (float32, CPU) and the probe accuracy (None when the head does not match)."""
    model.to(device)
    peek = to_device(probe.peek, device)

    def run_forward() -> Any:
        return model(peek)

    with torch.no_grad(), eval_mode(model):
        layer = resolve_layer(model, "penultimate", run_forward)
        feats, correct, head_matches = [], 0, True
        with FeatureCapture([layer]) as cap:
            for batch in probe.loader:
                x, y = unpack_batch(batch)
                out = model(to_device(x, device))
                feats.append(cap.take()[layer.name].cpu())
                logits = out[0] if isinstance(out, (tuple, list)) else out
                head_matches = head_matches and isinstance(logits, torch.Tensor) and logits.ndim == 2 and (
                    logits.shape[1] == probe.num_classes)
                if head_matches:
                    correct += int((logits.argmax(dim=1).cpu() == torch.as_tensor(y)).sum())
    z = torch.cat(feats)
    return z, (correct / z.shape[0] if head_matches else None)


def _metrics(z: torch.Tensor, probe: Probe, settings: ScoreSettings, device: torch.device) -> tuple[dict, float, list]:
    """The chosen metrics of ``z`` (bits), the resolved sigma, and notes on fallbacks."""
    if not bool(torch.isfinite(z).all()):
        raise ValueError("the penultimate features have NaN/Inf entries (a broken checkpoint?); no score")
    z = z.to(device)
    sigma = resolve_sigma(settings.sigma, z.double(), settings.seed)
    common = MetricSettings(sigma=sigma, t=settings.t, seed=settings.seed, dtype=getattr(torch, settings.dtype),
                            solver="auto", num_repetitions=settings.num_repetitions)
    groups = {"labels": probe.label_groups, "inputs": probe.input_groups}
    values, notes = {}, []
    for name in settings.metrics:
        metric = METRICS[name]
        ref = groups.get(metric.reference) if metric.reference else None
        result = metric.compute(z, None if ref is None else ref.to(device), common)
        # several names (alpha_req_r2); NaN where the metric does not apply, so that every row has its columns
        values.update(result.logged(name) or dict.fromkeys(logged_names(name, common), float("nan")))
        if result.fallback:
            notes.append(f"{name}: {result.fallback}")
    return values, sigma, notes


def _score_one(spec_text: str, module: nn.Module | None, probe: Probe, settings: ScoreSettings,
               device: torch.device, model_class: Any) -> dict[str, Any]:
    start = time.perf_counter()
    kind = "module" if module is not None else parse_model(spec_text).kind
    model = module if module is not None else load_model(spec_text, model_class)
    home = next(iter(model.parameters()), torch.empty(0)).device  # a given module goes back where it was
    used = device
    try:
        try:
            z, acc = _features_and_accuracy(model, probe, device)
            values, sigma, notes = _metrics(z, probe, settings, device)
        except Exception as err:  # noqa: BLE001 - out of memory on the GPU: the CPU has more
            if device.type != "cuda" or not _is_out_of_memory(err):
                raise
            warnings.warn(f"score: {spec_text} ran out of GPU memory ({err}); retrying on the CPU.",
                          ScoreWarning, stacklevel=3)
            torch.cuda.empty_cache()
            used = torch.device("cpu")
            z, acc = _features_and_accuracy(model, probe, used)
            values, sigma, notes = _metrics(z, probe, settings, used)
    finally:
        if module is not None:
            module.to(home)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    row: dict[str, Any] = {"model": spec_text, "kind": kind, "accuracy": acc,
                           "accuracy_source": "probe" if acc is not None else "none", **values,
                           "n": int(z.shape[0]), "dim": int(z.shape[1]), "sigma_value": sigma,
                           "device": used.type, "seconds": round(time.perf_counter() - start, 2),
                           "note": "; ".join(notes)}
    return row


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

    Per model, with Z its penultimate features [N, D] on the probe:

        DSE(Z) = -sum_i a_i log2 a_i,  a_i = |lambda_i|^t / sum_j |lambda_j|^t  (diffusion spectrum)
        DSMI(Z; B) = sum_b p(b) [ mean_r DSE(Z_r^(b)) - DSE(Z | B = b) ],  B = labels Y or input clusters X

    and, over the models, Pearson's r and Spearman's rho of each metric against accuracy.
    Example: see the module docstring.

    Args:
        models: MODEL strings (see :mod:`~dse_monitor.train.score_models`: checkpoints,
            ``timm:NAME``, ``torchvision:NAME``, list files) or ``(name, nn.Module)`` pairs.
        datamodule: a LightningDataModule (its ``<split>_dataloader()``), a map-style
            Dataset or a DataLoader, yielding ``(x, y)`` batches.
        out: folder for ``scores.csv`` (appended as each model finishes; a rerun skips
            the models in it and refuses changed settings), ``correlation.csv`` and
            ``scores.png`` (over every model in ``scores.csv``); None writes nothing.
        split, num_samples, seed: the probe: ``choose_indices(len(split), num_samples, seed)``.
        sigma: ``"sqrt_dim"`` (sqrt(D), the paper's choice), ``"median"`` or a number.
        t, num_repetitions, dtype: as in the monitor.
        n_clusters: clusters of the inputs for DSMI(Z;X); None: the number of classes.
        x_size: inputs resized to ``x_size x x_size`` before clustering (None: as they are).
        metrics: names from :data:`dse_monitor.registry.METRICS`.
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
    settings = ScoreSettings(split, num_samples, seed, sigma, float(t), n_clusters, x_size, tuple(metrics),
                             dtype, num_repetitions)
    items = _model_items(models)
    given_acc = read_accuracy_file(accuracy) if isinstance(accuracy, (str, Path)) else dict(accuracy or {})
    device = torch.device(device) if device is not None else _default_device()
    record = settings.record()
    scores = ScoresFile(Path(out) / "scores.csv") if out is not None else None
    previous = scores.read() if scores is not None else []
    check_settings(previous, record, scores.path if scores else None)  # before the (slow) probe pass
    probe = build_probe(datamodule, settings, batch_size)
    record = {**record, **probe.record()}
    check_settings(previous, record, scores.path if scores else None)
    if progress:
        clusters = "" if probe.input_groups is None else f", {int(probe.input_groups.unique().numel())} input clusters"
        print(f"score: probe = {len(probe.indices)} samples of the {split} split (seed {seed}){clusters}; "
              f"sigma = {sigma}, t = {t:g}")
    done = {r["model"]: r for r in previous}
    rows, failed = ScoreRows(), {}
    todo = [(name, module) for name, module in items if name not in done]
    if progress and len(todo) < len(items):
        print(f"score: {len(items) - len(todo)} of {len(items)} models already in {scores.path}; skipping them")
    bar = _progress(todo, progress)
    if progress and todo:
        _write(bar, format_header(settings.metrics))
    for name, module in bar:
        try:
            row = _score_one(name, module, probe, settings, device, model_class)
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
            _write(bar, format_row(row, settings.metrics))
    rows.extend(done[name] for name, _ in items if name in done)
    rows.failed = failed
    if progress and len(rows) > len(todo) - len(failed):  # some came from scores.csv: show them all
        print("\n".join([f"all {len(rows)} models:", format_header(settings.metrics),
                         *(format_row(r, settings.metrics) for r in rows)]))
    if out is not None:  # the files describe every model of scores.csv, also those of earlier runs
        every = list(done.values())
        table = correlations(every, settings.metrics)
        write_correlations(table, Path(out) / "correlation.csv")
        write_scatter(every, table, settings.metrics, Path(out) / "scores.png")
        write_failures(failed, Path(out) / "failures.csv")
        if progress:
            print(format_correlations(table))
    return rows


def _progress(todo: list, enabled: bool):
    if not enabled:
        return todo
    from tqdm.auto import tqdm

    return tqdm(todo, desc="score", unit="model", leave=True)


def _write(bar: Any, line: str) -> None:
    writer = getattr(bar, "write", None)
    (writer or print)(line)
