"""What one measurement produced (:class:`Measurement`) and the reference groups it used.

Plain records, shared by the compute step (:mod:`.compute`), the merge of the DDP ranks'
parts (:mod:`.shares`) and everything that reports them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..registry import parse_key
from .config import MonitorConfig

__all__ = ["Measurement", "ReferenceGroups"]


@dataclass
class ReferenceGroups:
    """Group ids of the probe samples for DSMI(Z;Y) (``labels``) and DSMI(Z;X) (``inputs``).

    Computed once per run (the input clustering is the expensive part) and stored in the
    checkpoint; a grouping that failed is not retried, and its metrics are not logged.
    """

    labels: Optional[torch.Tensor] = None
    inputs: Optional[torch.Tensor] = None
    labels_failed: bool = False
    inputs_failed: bool = False
    notes: list[str] = field(default_factory=list)

    def of(self, reference: Optional[str]) -> Optional[torch.Tensor]:
        return {"labels": self.labels, "inputs": self.inputs}.get(reference)

    def still_needed(self, config: MonitorConfig) -> tuple[bool, bool]:
        """(labels, inputs) that the next probe pass must still collect."""
        refs = config.references()
        want_inputs = "inputs" in refs and self.inputs is None and not self.inputs_failed
        # labels: for DSMI(Z;Y), or to count the classes (the default n_clusters of X)
        want_labels = self.labels is None and (
            ("labels" in refs and not self.labels_failed) or (want_inputs and config.n_clusters is None)
        )
        return want_labels, want_inputs


@dataclass
class Measurement:
    """Everything one measurement produced.

    ``values``: ``{"<prefix>/<layer>/<metric>": bits}`` (NaN for a layer with NaN/Inf
    features); ``spectra``: the DSE eigenvalues per layer (exact path); ``failures``:
    ``{layer: {metric: reason}}`` of metrics skipped alone; ``fallbacks``: why a solver
    was left (memory); ``notes``: warnings for the user; ``info``: choices made (frozen
    sigma / t); ``verdicts``: layers whose DSE is pinned by the scale.
    """

    step: int
    values: dict[str, float] = field(default_factory=dict)
    spectra: dict[str, np.ndarray] = field(default_factory=dict)
    failures: dict[str, dict[str, str]] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    #: ``{layer: (direction, warning)}`` where DSE sits at 0 or log2 N because of sigma's scale.
    verdicts: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: ``{duplicate: original}``: layers with identical pooled features, measured once (the original's values).
    aliases: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    #: ``{layer: (N, D)}``: the shape of each layer's features.
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: ``{layer: sigma}``: the numeric bandwidth each layer was measured with.
    sigmas: dict[str, float] = field(default_factory=dict)
    #: The reference groups the measurement used (pass them on: later measurements reuse them).
    groups: Optional[ReferenceGroups] = None
    #: ``{layer: {metric: note}}``: why a metric's value is NaN or not logged (its result's note).
    metric_notes: dict[str, dict[str, str]] = field(default_factory=dict)
    #: ``{"<layer>/<root metric>": rank}``: which DDP rank computed each unit (:mod:`.shares`; 0 alone;
    #: -1: all ranks together, DSE on a kernel whose rows are split over them).
    computed_by: dict[str, int] = field(default_factory=dict)

    def of_layer(self, layer: str) -> dict[str, float]:
        """``{name: value}`` of one layer (metrics and diagnostics), read from the logged keys."""
        keys = {k: parse_key(k) for k in self.values}
        return {key.name: self.values[k] for k, key in keys.items() if key is not None and key.layer == layer}
