"""``dse-monitor compare``: read the TensorBoard event files of many runs, group them by a
hyperparameter and draw mean +/- std over seeds per epoch.

A run is a folder holding ``events.out.tfevents.*`` files. Its hyperparameters come from
the ``config.yaml`` that LightningCLI saves beside them (flattened to dotted keys such as
``model.init_std`` and ``seed_everything``), else from the logger's ``hparams.yaml``.
Every curve is keyed by completed epochs (0 = at initialisation). Scalars logged by
Lightning (``val_acc``) are stepped by global step and mapped to completed epochs through
Lightning's ``epoch`` scalar; the monitor's curves are read in both layouts: stepped by
completed epochs (event files of earlier versions) or by the global step at which
Lightning logs the same epoch's validation (0 at initialisation). ``--x step`` plots
against those global steps instead.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import yaml

from ..registry import METRICS
from .tables import is_monitor_tag, format_columns, mean_std

__all__ = ["Run", "aggregate", "by_step", "compare", "find_runs", "flatten", "load_runs", "read_run"]

MONITOR_METRICS = tuple(METRICS)
TITLES = {**{m.name: m.title for m in METRICS.values()}, "val_acc": "validation accuracy"}


@dataclass
class Run:
    """One run: where it is, its flattened hyperparameters and its curves by epoch."""

    path: Path
    name: str
    hparams: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, dict[int, float]] = field(default_factory=dict)
    #: completed epochs -> the global step ending them, from Lightning's ``epoch`` scalar
    step_of_epoch: dict[int, int] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        """The hyperparameter ``key`` (dotted), or a unique key ending with ``.key``; KeyError if none."""
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


def _read_hparams(path: Path) -> dict[str, Any]:
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
        prefix = tag.split("/", 1)[0]
        if is_monitor_tag(tag) and prefix in monitor_epochs:  # this version logs <prefix>/epoch beside its values
            series = _by_monitor_epoch(events, monitor_epochs[prefix])
            if series:
                curves[tag] = series
            continue
        at_global_steps = not is_monitor_tag(tag) or _monitor_at_global_steps(
            {e.step for e in events if e.step}, epoch_at_step, val_steps)
        series: dict[int, float] = {}
        for e in events:
            if not at_global_steps:
                epoch = e.step
            elif is_monitor_tag(tag) and e.step == 0:
                epoch = 0  # the measurement at initialisation
            elif e.step in epoch_at_step:
                epoch = epoch_at_step[e.step] + 1  # logged during epoch k (0-based) = k+1 completed
            else:
                continue
            series[epoch] = float(e.value)  # a resumed run's later value wins
        if series:
            curves[tag] = dict(sorted(series.items()))
    name = str(path.relative_to(root)) if root is not None and path != Path(root) else path.name
    return Run(path=path, name=name, hparams=_read_hparams(path), curves=curves, step_of_epoch=step_of_epoch)


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


def resolve_tags(runs: Sequence[Run], metrics: Sequence[str]) -> list[str]:
    """Metric names (``dse``) or full tags (``dse/penultimate/dse``) -> tags present in the runs."""
    present = sorted({t for r in runs for t in r.curves})
    out: list[str] = []
    for m in metrics:
        if m in present:
            hits = [m]
        else:
            hits = [t for t in present if is_monitor_tag(t) and t.split("/")[-1] == m]
        if not hits:
            raise ValueError(f"no run has the metric {m!r}; scalars found: {', '.join(present) or 'none'}")
        out.extend(h for h in hits if h not in out)
    return out


def _sort_key(value: Any) -> tuple[int, Any]:
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, str(value))


def aggregate(runs: Sequence[Run], tag: str, group_by: str) -> dict[Any, dict[int, tuple[float, float, int]]]:
    """``{group value: {epoch: (mean, std, n)}}`` of one tag over the runs of each group.

    ``std`` is the sample standard deviation over seeds (0 for one run).

    Example:
        >>> a = Run(Path("a"), "a", {"model.init_std": 0.1}, {"dse": {0: 1.0, 1: 2.0}})
        >>> b = Run(Path("b"), "b", {"model.init_std": 0.1}, {"dse": {0: 3.0, 1: 2.0}})
        >>> aggregate([a, b], "dse", "model.init_std")
        {0.1: {0: (2.0, 1.4142135623730951, 2), 1: (2.0, 0.0, 2)}}
    """
    groups: dict[Any, list[Run]] = {}
    for r in runs:
        if tag in r.curves:
            groups.setdefault(r.get(group_by), []).append(r)
    out: dict[Any, dict[int, tuple[float, float, int]]] = {}
    for value in sorted(groups, key=_sort_key):
        epochs = sorted({e for r in groups[value] for e in r.curves[tag]})
        table = {}
        for e in epochs:
            vals = np.array([r.curves[tag][e] for r in groups[value] if e in r.curves[tag]], dtype=float)
            std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            table[e] = (float(vals.mean()), std, int(len(vals)))
        out[value] = table
    return out


def load_runs(root: Path, group_by: str, say: Any = print) -> list[Run]:
    """The readable runs under ``root`` that have ``group_by``, newest of identical configs; others named."""
    paths = find_runs(root)
    if not paths:
        raise FileNotFoundError(f"no TensorBoard event files under {root}")
    runs = _select_runs(paths, root, group_by, say)
    if not runs:
        raise ValueError(f"no readable run under {root} has the hyperparameter {group_by!r}")
    return _drop_duplicates(runs, say)


def _select_runs(paths: Iterable[Path], root: Path, group_by: str, say: Any) -> list[Run]:
    runs: list[Run] = []
    for p in paths:
        try:
            run = read_run(p, root)
        except Exception as err:  # noqa: BLE001 - an unreadable run is reported, not fatal
            name = str(p.relative_to(root)) if p != root else p.name
            say(f"skipped {name}: unreadable ({err})")
            continue
        try:
            run.get(group_by)
        except KeyError:
            say(f"skipped {run.name}: no hyperparameter {group_by!r} (no config.yaml / hparams.yaml with it)")
            continue
        runs.append(run)
    return runs


def _drop_duplicates(runs: list[Run], say: Any) -> list[Run]:
    """Runs with identical hyperparameters (a sweep re-run into the same root): the newest counts."""
    def newest(r: Run) -> float:
        return max((f.stat().st_mtime for f in r.path.glob("events.out.tfevents.*")), default=0.0)

    by_config: dict[str, list[Run]] = {}
    for r in runs:
        if not r.hparams:
            by_config[f"__{r.path}"] = [r]
            continue
        by_config.setdefault(repr(sorted((k, repr(v)) for k, v in r.hparams.items())), []).append(r)
    kept = []
    for group in by_config.values():
        group.sort(key=newest)
        for old in group[:-1]:
            say(f"skipped {old.name}: same hyperparameters as the newer {group[-1].name}")
        kept.append(group[-1])
    return sorted(kept, key=lambda r: r.name)


def _drop_partial(runs: list[Run], tags: Sequence[str], group_by: str, say: Any) -> list[Run]:
    """Runs missing a requested curve, or stopped before the others of their group, are skipped."""
    kept = []
    longest: dict[tuple[str, Any], int] = {}
    for r in runs:
        for t in tags:
            if t in r.curves:
                k = (t, r.get(group_by))
                longest[k] = max(longest.get(k, -1), max(r.curves[t]))
    for r in runs:
        reason = None
        for t in tags:
            if t not in r.curves:
                reason = f"no {t!r} curve"
                break
            last = max(r.curves[t])
            if last < longest[(t, r.get(group_by))]:
                reason = f"partial: {t!r} stops at epoch {last}, its group reaches {longest[(t, r.get(group_by))]}"
                break
        if reason:
            say(f"skipped {r.name}: {reason}")
        else:
            kept.append(r)
    return kept


def format_table(curves: dict[str, dict[Any, dict[int, tuple[float, float, int]]]], group_by: str,
                 x: str = "epoch") -> str:
    """A compact table: per metric and group, the runs and the values at first, second and last epoch."""
    lines = []
    for tag, groups in curves.items():
        epochs = sorted({e for g in groups.values() for e in g})
        shown = sorted({epochs[0], epochs[min(1, len(epochs) - 1)], epochs[-1]}) if epochs else []
        rows = []
        for value, table in groups.items():
            n = max((v[2] for v in table.values()), default=0)
            rows.append([str(value), str(n)] + [mean_std(*table[e]) if e in table else "-" for e in shown])
        lines.append(f"{TITLES.get(tag.split('/')[-1], tag)} [{tag}]")
        lines.append(format_columns([group_by, "runs"] + [f"{x} {e}" for e in shown], rows, indent="  "))
    return "\n".join(lines)


def write_csv(curves: dict[str, dict[Any, dict[int, tuple[float, float, int]]]], group_by: str, path: Path,
              x: str = "epoch") -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "group_by", "group", x, "mean", "std", "n_runs"])
        for tag, groups in curves.items():
            for value, table in groups.items():
                for e, (mean, std, n) in table.items():
                    w.writerow([tag, group_by, value, e, repr(mean), repr(std), n])


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("`dse-monitor compare` draws with matplotlib: pip install matplotlib") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(curves: dict[str, dict[Any, dict[int, tuple[float, float, int]]]], group_by: str, path: Path,
         title: str | None = None, x: str = "epoch") -> None:
    """One panel per curve, one line per group: mean with a +/- std band over seeds."""
    plt = _pyplot()
    n = len(curves)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.5), squeeze=False)
    from matplotlib.ticker import MaxNLocator

    for ax, (tag, groups) in zip(axes[0], curves.items()):
        k = len(groups)
        cmap = plt.get_cmap("tab10") if k <= 10 else plt.get_cmap("viridis")
        for i, (value, table) in enumerate(groups.items()):
            epochs = np.array(sorted(table))
            mean = np.array([table[e][0] for e in epochs])
            std = np.array([table[e][1] for e in epochs])
            color = cmap(i) if k <= 10 else cmap(i / max(1, k - 1) * 0.9)
            nruns = max(v[2] for v in table.values())
            ax.plot(epochs, mean, color=color, marker="o", markersize=2.5, label=f"{value} (n={nruns})")
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        metric = tag.split("/")[-1]
        parts = tag.split("/")
        layer = f" — {'/'.join(parts[1:-1])}" if len(parts) >= 3 and parts[1:-1] != ["penultimate"] else ""
        ax.set_title(TITLES.get(metric, tag) + layer)
        ax.set_xlabel("global step" if x == "step" else "epoch")
        ax.set_ylabel(METRICS[metric].unit if metric in METRICS else ("accuracy" if "acc" in metric else metric))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].legend(title=group_by, fontsize=8, title_fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(
    root: str | os.PathLike,
    metrics: Sequence[str] = ("dse",),
    group_by: str = "model.init_std",
    out: str | os.PathLike | None = None,
    csv_path: str | os.PathLike | None = None,
    accuracy: str | None = "val_acc,probe_acc",
    say: Any = print,
    x: str = "epoch",
) -> dict[str, Any]:
    """Group the runs under ``root`` by ``group_by``; write a PNG and a CSV; print a table.

    ``accuracy`` may name several scalars, comma-separated (``"val_acc,probe_acc"``); those
    present are drawn beside the metrics. ``x="step"`` plots against the global step that
    ends each epoch instead of the epoch.

    Returns ``{"curves": ..., "runs": [...], "png": path, "csv": path}``.
    """
    if x not in ("epoch", "step"):
        raise ValueError(f"x must be 'epoch' or 'step', got {x!r}")
    root = Path(root)
    runs = load_runs(root, group_by, say)
    tags = resolve_tags(runs, metrics)
    accuracies = [a for a in (accuracy or "").split(",") if a and any(a in r.curves for r in runs)]
    tags += [a for a in accuracies if a not in tags]
    runs = _drop_partial(runs, [t for t in tags if t not in accuracies], group_by, say)
    if not runs:
        raise ValueError("every run was skipped")
    if x == "step":
        runs = [replace(r, curves={t: by_step(r, t) for t in tags if t in r.curves}) for r in runs]
    curves = {t: aggregate(runs, t, group_by) for t in tags}
    slug = "_".join(m.replace("/", "-") for m in metrics)
    png = Path(out) if out is not None else root / f"compare_{slug}.png"
    csv_file = Path(csv_path) if csv_path is not None else png.with_suffix(".csv")
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(curves, group_by, png, title=f"{root.name}: {len(runs)} runs by {group_by}", x=x)
    write_csv(curves, group_by, csv_file, x=x)
    say(format_table(curves, group_by, x=x))
    say(f"figure: {png}\ncurves: {csv_file}")
    return {"curves": curves, "runs": runs, "png": png, "csv": csv_file}
