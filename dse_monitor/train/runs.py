"""Reading runs: the TensorBoard event files and saved configs of each run under a log root.

A run is a folder holding ``events.out.tfevents.*`` files. Its hyperparameters come from
the ``config.yaml`` that LightningCLI saves beside them (flattened to dotted keys such as
``model.init_std`` and ``seed_everything``), else from the logger's ``hparams.yaml``.
Every curve is keyed by completed epochs (0 = at initialisation). Scalars logged by
Lightning (``val_acc``) are stepped by global step and mapped to completed epochs through
Lightning's ``epoch`` scalar; the monitor's curves are read in both layouts: stepped by
completed epochs (event files of earlier versions) or by the global step at which
Lightning logs the same epoch's validation (0 at initialisation).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..registry import METRICS, MetricKey, is_monitor_name, parse_key

__all__ = [
    "ALL",
    "Run",
    "by_step",
    "find_runs",
    "flatten",
    "layers_of",
    "monitor_key",
    "read_hparams",
    "read_run",
]


#: The one group of runs compared without ``--group-by``
ALL = "all runs"


def monitor_key(tag: str) -> MetricKey | None:
    """The parts of one of the monitor's tags (``<prefix>/<layer>/<metric or diagnostic>``); None for others.

    >>> monitor_key("dse/penultimate/dsmi_y").layer, monitor_key("val_acc"), monitor_key("a/b/loss")
    ('penultimate', None, None)
    """
    key = parse_key(tag)
    return key if key is not None and is_monitor_name(key.name) else None


@dataclass
class Run:
    """One run: where it is, its flattened hyperparameters and its curves by epoch."""

    path: Path
    name: str
    hparams: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, dict[int, float]] = field(default_factory=dict)
    #: completed epochs -> the global step ending them, from Lightning's ``epoch`` scalar
    step_of_epoch: dict[int, int] = field(default_factory=dict)

    def get(self, key: str | None) -> Any:
        """The hyperparameter ``key`` (dotted), or a unique key ending with ``.key``; KeyError if none.

        ``None`` (no grouping) is :data:`ALL` for every run.
        """
        if key is None:
            return ALL
        if key in self.hparams:
            return self.hparams[key]
        tail = key.rsplit(".", 1)[-1]
        hits = [k for k in self.hparams if k == tail or k.endswith("." + tail)]
        if len(hits) == 1:
            return self.hparams[hits[0]]
        raise KeyError(key)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> one dict with dotted keys; ``init_args`` levels are dropped.

    Example:
        >>> flatten({"model": {"init_std": 0.1, "backbone": "resnet18"}, "seed_everything": 2})
        {'model.init_std': 0.1, 'model.backbone': 'resnet18', 'seed_everything': 2}
    """
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == "init_args":
                out.update(flatten(v, prefix))
                continue
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out.update(flatten(v, key))
            else:
                out[key] = v
    return out


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Every folder under ``root`` (itself included) that holds TensorBoard event files, sorted."""
    root = Path(root)
    found = set()
    for dirpath, _dirs, files in os.walk(root):
        if any(f.startswith("events.out.tfevents.") for f in files):
            found.add(Path(dirpath))
    return sorted(found)


def read_hparams(path: Path) -> dict[str, Any]:
    """The flattened hyperparameters saved in a run folder (``hparams.yaml``, then ``config.yaml``)."""
    hparams: dict[str, Any] = {}
    for name in ("hparams.yaml", "config.yaml"):  # later files win: config.yaml is complete
        f = path / name
        if f.is_file():
            with open(f) as fh:
                data = yaml.safe_load(fh) or {}
            hparams.update(flatten(data))
    return hparams


def read_run(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Run:
    """Read one run folder: hyperparameters and scalar curves keyed by completed epochs.

    Raises ``ValueError`` when the folder holds no readable scalars.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = Path(path)
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags().get("scalars", [])
    if not tags:
        raise ValueError("no scalars in its event files")
    epoch_at_step: dict[int, int] = {}
    if "epoch" in tags:
        for e in acc.Scalars("epoch"):
            epoch_at_step[e.step] = int(round(e.value))
    # completed epochs -> the global step that ends them (where Lightning logs that epoch's validation)
    step_of_epoch = {0: 0}
    for step, epoch in epoch_at_step.items():
        step_of_epoch[epoch + 1] = max(step, step_of_epoch.get(epoch + 1, step))
    val_steps = {e.step for t in tags if t.startswith("val_") for e in acc.Scalars(t)}
    curves: dict[str, dict[int, float]] = {}
    monitor_epochs = {t.rsplit("/", 1)[0]: acc.Scalars(t) for t in tags if t.endswith("/epoch") and t.count("/") == 1}
    for tag in tags:
        if tag == "epoch" or tag.rsplit("/", 1)[0] in monitor_epochs and tag.count("/") == 1:
            continue
        events = acc.Scalars(tag)
        key = monitor_key(tag)
        if key is not None and key.prefix in monitor_epochs:  # this version logs <prefix>/epoch beside its values
            series = _by_monitor_epoch(events, monitor_epochs[key.prefix])
            if series:
                curves[tag] = series
            continue
        at_global_steps = key is None or _monitor_at_global_steps(
            {e.step for e in events if e.step}, epoch_at_step, val_steps)
        series: dict[int, float] = {}
        for e in events:
            if not at_global_steps:
                epoch = e.step
            elif key is not None and e.step == 0:
                epoch = 0  # the measurement at initialisation
            elif e.step in epoch_at_step:
                epoch = epoch_at_step[e.step] + 1  # logged during epoch k (0-based) = k+1 completed
            else:
                continue
            series[epoch] = float(e.value)  # a resumed run's later value wins
        if series:
            curves[tag] = dict(sorted(series.items()))
    name = str(path.relative_to(root)) if root is not None and path != Path(root) else path.name
    return Run(path=path, name=name, hparams=read_hparams(path), curves=curves, step_of_epoch=step_of_epoch)


def _by_monitor_epoch(events: Sequence[Any], epochs: Sequence[Any]) -> dict[int, float]:
    """A monitor curve keyed by the completed epochs logged with it (``<prefix>/epoch``): each value
    pairs with the epoch event of the same step written closest in time (one ``log_metrics`` call)."""
    by_step: dict[int, list[Any]] = {}
    for e in epochs:
        by_step.setdefault(e.step, []).append(e)
    series: dict[int, float] = {}
    for e in events:
        candidates = by_step.get(e.step)
        if candidates:
            match = min(candidates, key=lambda c: abs(c.wall_time - e.wall_time))
            series[int(round(match.value))] = float(e.value)  # a resumed run's later value wins
    return dict(sorted(series.items()))


def _monitor_at_global_steps(steps: set[int], epoch_at_step: dict[int, int], val_steps: set[int]) -> bool:
    """Whether a monitor curve was logged at global steps (else at completed epochs, the older layout).

    Global steps are steps where Lightning logged its ``epoch`` scalar; completed epochs
    are at most the last epoch + 1. When both readings fit (one or two batches per epoch),
    the steps of the validation metrics decide.
    """
    if not steps or not steps <= set(epoch_at_step):
        return False
    last_completed = max(epoch_at_step.values(), default=-1) + 1
    if not steps <= set(range(last_completed + 1)):
        return True
    return bool(val_steps) and steps <= val_steps


def by_step(run: Run, tag: str) -> dict[int, float]:
    """A curve of ``run`` keyed by the global step that ends each epoch (0 = at initialisation).

    Raises ``ValueError`` when the run has no Lightning ``epoch`` scalar to map epochs to steps.
    """
    missing = [e for e in run.curves[tag] if e not in run.step_of_epoch]
    if missing:
        raise ValueError(f"{run.name}: no global step known for epoch {missing[0]} of {tag!r} "
                         "(its event files have no Lightning `epoch` scalar); plot against epochs")
    return {run.step_of_epoch[e]: v for e, v in run.curves[tag].items()}


def layers_of(runs: Sequence[Run]) -> list[str]:
    """``<prefix>/<layer>`` of every monitor metric curve in the runs, in order of appearance."""
    seen: list[str] = []
    for r in runs:
        for tag in r.curves:
            key = monitor_key(tag)
            if key is not None and key.name in METRICS:  # not the diagnostics
                lay = f"{key.prefix}/{key.layer}"
                if lay not in seen:
                    seen.append(lay)
    return seen
