"""One Trainer-free measurement: a model, a probe and settings in, a :class:`Measurement` out.

It is the two pieces that the callback runs too, with nothing between them::

    probe indices (choose_indices) -> loader (probe_loader)
      -> preflight: layers resolved, labels checked on a peek batch   collect.preflight
      -> probe pass: pooled features, labels, inputs                  collect.collect_features
      -> compute: reference groups, then every metric of every layer  measure_features
           (compute.make_groups, compute.compute_measurement)

The callback puts the DDP gather between the probe pass and the compute step (its
:class:`~dse_monitor.monitor.probe.ProbeSet` supplies each rank's loader and gathers);
``dse-monitor score`` calls :func:`measure` once per model. Batches are read as the
callback reads them (:func:`~dse_monitor.capture.split_batch`): ``(x, y)`` tuples, image
dicts, Hugging Face ``BatchEncoding`` batches (``model(**batch)``, ``attention_mask``
pooling), or through ``batch_fn`` / ``forward_fn``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..capture.hooks import FeatureCapture
from ..capture.probe import choose_indices, probe_loader, source_dataset
from .collect import OnOutput, ProbeFeatures, collect_features, isolated_rng, module_device, preflight
from .compute import Measurement, ReferenceGroups, compute_measurement, make_groups
from .config import MonitorConfig
from .policies import Frozen

__all__ = ["measure", "measure_features", "probe_indices"]

#: Samples of the peek batch that resolves the layers before the probe pass.
PEEK = 8


def probe_indices(source: Union[Dataset, DataLoader], config: MonitorConfig) -> list[int]:
    """The probe subset of ``source``: ``choose_indices(len(dataset), config.num_samples, config.seed)``.

    >>> from torch.utils.data import TensorDataset
    >>> probe_indices(TensorDataset(torch.zeros(10, 1)), MonitorConfig(num_samples=4))
    [0, 2, 6, 9]
    """
    n_total = len(source_dataset(source))
    if n_total < 2:
        raise ValueError(f"DSEMonitor needs a probe split of at least 2 samples, got {n_total}.")
    return choose_indices(n_total, config.num_samples, config.seed)


def measure_features(
    config: MonitorConfig,
    features: ProbeFeatures,
    known: ReferenceGroups,
    step: int = 0,
    frozen: Optional[Frozen] = None,
    previous: Optional[dict[str, torch.Tensor]] = None,
) -> Measurement:
    """The compute step: complete the reference groups ``known`` from the collected labels and
    inputs, then every metric of every layer (pure; the callback's rank-0 path runs it).
    ``previous``: each layer's features at the previous measurement (``cka_prev``), updated here."""
    groups = make_groups(config, known, features.labels, features.inputs, features.why_no_inputs)
    return compute_measurement(config, features.features, groups, step, frozen, bad_inputs=features.bad_inputs,
                               previous=previous)


def measure(
    model: nn.Module,
    probe: Union[Dataset, DataLoader, None] = None,
    config: Optional[MonitorConfig] = None,
    *,
    indices: Optional[Sequence[int]] = None,
    groups: Optional[ReferenceGroups] = None,
    frozen: Optional[Frozen] = None,
    step: int = 0,
    on_output: Optional[OnOutput] = None,
    **settings: Any,
) -> Measurement:
    """Measure ``model``'s layers on a probe subset of ``probe``, without a Trainer.

    The values are the callback's for the same model, probe and settings: Z [N, D] the
    pooled features of each layer on the probe, DSE(Z) = -sum_i a_i log2 a_i with
    a_i = |lambda_i|^t / sum_j |lambda_j|^t over the diffusion spectrum of Z, DSMI(Z;B) =
    sum_b p(b) [mean_r DSE(Z_r) - DSE(Z | B=b)], and the other metrics of
    :data:`~dse_monitor.registry.METRICS`.

    Args:
        model: the module whose layers are read; it runs where it is (the batches are
            moved to its device), in eval mode, under ``torch.no_grad()``.
        probe: a map-style Dataset or a DataLoader (its collate function and batch size
            are used); default: ``config.probe``.
        config: the settings (:class:`MonitorConfig`), or give them as keyword arguments
            (``layers``, ``metrics``, ``sigma``, ``num_samples``, ``batch_fn``, ``forward_fn`` ...).
        indices: the probe subset (default :func:`probe_indices`).
        groups: reference groups of an earlier measurement on the same probe (labels,
            input clusters), reused instead of computed again.
        frozen: per-layer sigma / t chosen by an earlier measurement (``"median_init"``, ``"knee"``).
        step: the measurement's step (in the messages).
        on_output: called as ``on_output(model_output, probe_batch)`` after each forward pass.

    Returns:
        a :class:`Measurement`: ``values`` keyed ``<prefix>/<layer>/<name>`` (``of_layer``
        gives one layer's by name), ``shapes``, ``sigmas``, ``groups`` (pass them to the
        next call), ``notes`` and ``failures`` (a metric that cannot be measured is left
        out with a note, never given a made-up value).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from dse_monitor import measure
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(64, 4, generator=g), torch.arange(64) % 4)
        >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> m = measure(net, data, metrics=["dse", "dsmi_y", "dse_norm"], sigma="sqrt_dim", num_samples=None)
        >>> sorted(m.of_layer("penultimate")), m.shapes, m.sigmas
        (['dse', 'dse_norm', 'dsmi_y', 'sigma_ratio'], {'penultimate': (64, 16)}, {'penultimate': 4.0})
    """
    if config is None:
        config = MonitorConfig(**settings)
    elif settings:
        raise TypeError(f"measure: pass the settings as a MonitorConfig or as keyword arguments, not both "
                        f"(got config and {sorted(settings)})")
    source = probe if probe is not None else config.probe
    if isinstance(source, str):
        raise ValueError(f"measure needs the probe as a Dataset or DataLoader, got probe={source!r} (only the "
                         "callback reads a trainer's loaders)")
    indices = probe_indices(source, config) if indices is None else list(indices)
    known = groups if groups is not None else ReferenceGroups()
    want_labels, want_inputs = known.still_needed(config)
    with isolated_rng(module_device(model)), torch.no_grad():
        peek = probe_loader(source, indices[:PEEK], batch_size=PEEK)
        layers = preflight(None, model, next(iter(peek)), config)
        loader = probe_loader(source, indices, config.batch_size)
        features = collect_features(None, model, loader, layers, config, FeatureCapture(layers, config.pooling),
                                    want_labels=want_labels, want_inputs=want_inputs, on_output=on_output)
    return measure_features(config, features, known, step, frozen)
