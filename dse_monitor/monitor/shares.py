"""Each DDP rank's share of one measurement, and the merge of the ranks' parts.

A measurement is cut into units, one per layer and *root* metric (a metric with its
derived ones: ``dse`` with ``dse_norm`` and ``spectral_gap``; ``dsmi_y``; ...). The
units are dealt to the ranks by estimated cost, longest first, each to the least loaded
rank (ties: the lower rank), so every rank computes the same deal from the same shapes
and groups. A layer's first unit carries the layer's own records (shape, sigma, its
NaN check). Every rank holds the gathered features, so no features move; only the
parts (values, spectra, notes) go back, one broadcast per rank, and every rank merges
them into the Measurement a single process would have made.

Estimated cost of a unit on N rows of D features with ``k`` reference groups:
``N^3`` for an eigen-solve of all rows (``dse``), ``(1 + R) N^3 / k`` for DSMI (each
group solved once, plus ``R`` random subsets of its size), ``N^2 D`` otherwise.

>>> deal = assign_units([Unit("a", "dse", 8.0), Unit("a", "dsmi_y", 1.0), Unit("b", "dse", 8.0)], world=2)
>>> deal
{('a', 'dse'): 0, ('b', 'dse'): 1, ('a', 'dsmi_y'): 0}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from ..registry import METRICS, root_metric

__all__ = ["Share", "Unit", "assign_units", "layer_units", "by_layer", "merge_parts", "plan_deal", "unit_of"]


@dataclass(frozen=True)
class Share:
    """This process's place among the ranks that split a measurement."""

    rank: int
    world: int


@dataclass(frozen=True)
class Unit:
    """One layer's root metric (with the metrics derived from it) and its estimated cost."""

    layer: str
    root: str
    cost: float


def unit_of(name: str, metrics: Sequence[str], rows_split: bool = False) -> str:
    """The unit (root metric) that computes ``name`` among a layer's ``metrics``: its root, except
    ``knn_acc`` beside DSE, which reads its neighbours off DSE's dense kernel product (same rank;
    not when the kernel's rows are split over the ranks, ``rows_split``: no rank holds it whole).

    >>> unit_of("knn_acc", ["dse_norm", "knn_acc"]), unit_of("knn_acc", ["knn_acc"])
    ('dse', 'knn_acc')
    """
    if name == "knn_acc" and not rows_split and any(root_metric(m) == "dse" for m in metrics):
        return "dse"
    return root_metric(name)


def _cost(root: str, n: int, d: int, groups: Optional[torch.Tensor], repetitions: int) -> float:
    if root == "dse":
        return float(n) ** 3
    if root.startswith("dsmi") and groups is not None:
        k = max(1, int(torch.unique(groups).numel()))
        return (1 + repetitions) * float(n) ** 3 / k
    return float(n) ** 2 * max(d, 1)


def layer_units(layer: str, unit: dict[str, str], shape: tuple[int, int],
                refs: dict[str, Optional[torch.Tensor]], repetitions: int, rows_split: bool = False) -> list[Unit]:
    """The units of one layer from ``unit`` (each metric's, :func:`unit_of`, in the metrics' order; a
    layer with no metric: one empty unit). ``rows_split``: DSE is computed by all ranks together (its
    unit costs no rank more than another)."""
    roots = list(dict.fromkeys(unit.values())) or [""]
    return [Unit(layer, r, 0.0 if rows_split and r == "dse" else
                 _cost(r, shape[0], shape[1], refs.get(METRICS[r].reference) if r else None, repetitions))
            for r in roots]


def assign_units(units: Sequence[Unit], world: int) -> dict[tuple[str, str], int]:
    """``{(layer, root): rank}``: longest unit first, each to the least loaded rank (deterministic)."""
    load = [0.0] * world
    deal: dict[tuple[str, str], int] = {}
    for i in sorted(range(len(units)), key=lambda i: (-units[i].cost, i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        load[rank] += units[i].cost
        deal[(units[i].layer, units[i].root)] = rank
    return deal


def plan_deal(units: Sequence[Unit], world: int, rows_split: bool = False, share_subsets: bool = False
              ) -> tuple[dict[tuple[str, str], int], set[tuple[str, str]]]:
    """``(deal, together)``: each unit's rank, and the units that every rank computes together.

    Together: DSE when the kernel's rows are split (``rows_split``), and, where ``share_subsets``
    allows it and it shortens the longest rank's work, every DSMI unit, whose subset solves
    are then shared out (each rank 1/W of its cost); the rest is dealt by :func:`assign_units`.
    A unit computed together still has an owner, who keeps its values.

    >>> units = [Unit("a", "dsmi_y", 6.0), Unit("a", "dsmi_x", 6.0), Unit("a", "cse", 1.0)]
    >>> plan_deal(units, 4)[1], sorted(plan_deal(units, 4, share_subsets=True)[1])
    (set(), [('a', 'dsmi_x'), ('a', 'dsmi_y')])
    """
    fixed = {(u.layer, u.root) for u in units if rows_split and u.root == "dse"}

    def longest(together: set) -> tuple[float, dict]:
        rest = [u if (u.layer, u.root) not in together else Unit(u.layer, u.root, 0.0) for u in units]
        deal = assign_units(rest, world)
        load = [0.0] * world
        for u in rest:
            load[deal[(u.layer, u.root)]] += u.cost
        shared = sum(u.cost for u in units if (u.layer, u.root) in together and u.root.startswith("dsmi")) / world
        return max(load) + shared, deal

    plain_time, plain = longest(fixed)
    if not share_subsets:
        return plain, fixed
    together = fixed | {(u.layer, u.root) for u in units if u.root.startswith("dsmi")}
    shared_time, shared = longest(together)
    return (shared, together) if shared_time < plain_time else (plain, fixed)


def merge_parts(parts: Sequence, sort_key: Callable[[str], Any]):
    """One Measurement from the ranks' parts (the first is updated): ``values`` sorted by ``sort_key``
    (the order a single process logs them in); lists joined in rank order."""
    out = parts[0]
    for part in parts[1:]:
        out.values.update(part.values)
        for per_layer in ("failures", "metric_notes"):
            for layer, entries in getattr(part, per_layer).items():
                getattr(out, per_layer).setdefault(layer, {}).update(entries)
        for name in ("spectra", "shapes", "sigmas", "verdicts", "computed_by"):
            getattr(out, name).update(getattr(part, name))
        for name in ("fallbacks", "notes", "info"):
            getattr(out, name).extend(getattr(part, name))
    out.values = dict(sorted(out.values.items(), key=lambda kv: sort_key(kv[0])))
    return out


def by_layer(lines: list[str], layers: Sequence[str]) -> list[str]:
    """``lines`` in the order of the first layer each names (``'name'``), as one process writes them
    layer by layer; lines that name none first; stable otherwise.

    >>> by_layer(["layer 'b' x", "all", "layer 'a' y"], ["a", "b"])
    ['all', "layer 'a' y", "layer 'b' x"]
    """
    def first(line: str) -> int:
        return next((i for i, layer in enumerate(layers) if repr(layer) in line), -1)

    return sorted(lines, key=first)
