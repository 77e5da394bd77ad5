"""What the monitor keeps across a checkpoint: probe indices, reference groups, history.

The layout is versioned: :meth:`MonitorState.to_dict` writes ``version``
(:data:`STATE_VERSION`) and :meth:`MonitorState.from_dict` reads every earlier version,
so a change of layout can still resume today's checkpoints.

Version 1: ``{"version": 1, "indices", "label_groups", "input_groups",
"history": {epoch: {key: value}}}`` (logged at step = completed epochs).
Version 2 adds ``positions``: ``{history key: {"epoch", "global_step", "step"}}``, where
the history key is the completed epochs (epoch cadence) or the global step (step
cadence) and ``step`` is where the loggers got the values; and ``frozen``:
``{"sigma": {layer: value}, "t": {layer: value}}``, chosen at a layer's first
measurement (``sigma="median_init"``, ``t="knee"``) and reused after a resume.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .policies import Frozen, frozen_from_dict, frozen_to_dict

STATE_VERSION = 2


@dataclass
class MonitorState:
    """The monitor's durable state.

    ``history`` maps a measurement's key (completed training epochs, or the global step
    with ``every_n_train_steps``; 0 = at init) to the values logged then,
    ``{"<prefix>/<layer>/<metric>": value}``; ``positions`` gives each key's epoch,
    global step and logged step.

    Example:
        >>> s = MonitorState(indices=[0, 3], history={0: {"dse/penultimate/dse": 1.5}})
        >>> MonitorState.from_dict(s.to_dict()) == s
        True
    """

    indices: Optional[list[int]] = None
    label_groups: Optional[torch.Tensor] = None
    input_groups: Optional[torch.Tensor] = None
    history: dict[int, dict[str, float]] = field(default_factory=dict)
    positions: dict[int, dict[str, Optional[int]]] = field(default_factory=dict)
    frozen: Frozen = field(default_factory=Frozen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "indices": self.indices,
            "label_groups": self.label_groups,
            "input_groups": self.input_groups,
            "history": {int(k): dict(v) for k, v in self.history.items()},
            "positions": {int(k): dict(v) for k, v in self.positions.items()},
            "frozen": frozen_to_dict(self.frozen),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "MonitorState":
        version = int(state.get("version", 1))
        if version > STATE_VERSION:
            raise ValueError(
                f"DSEMonitor: the checkpoint's monitor state has version {version}, newer than this dse-monitor "
                f"reads ({STATE_VERSION}); upgrade dse-monitor to resume it."
            )
        indices = state.get("indices")
        history = {int(k): dict(v) for k, v in state.get("history", {}).items()}
        if version == 1:  # logged by epoch, global steps unknown
            positions = {k: {"epoch": k, "global_step": None, "step": k} for k in history}
        else:
            positions = {int(k): dict(v) for k, v in state.get("positions", {}).items()}
        return cls(
            indices=None if indices is None else [int(i) for i in indices],
            label_groups=state.get("label_groups"),
            input_groups=state.get("input_groups"),
            history=history,
            positions=positions,
            frozen=frozen_from_dict(state.get("frozen")),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MonitorState):
            return NotImplemented

        def same(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> bool:
            return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))

        return (self.indices == other.indices and self.history == other.history
                and self.positions == other.positions and self.frozen == other.frozen
                and same(self.label_groups, other.label_groups) and same(self.input_groups, other.input_groups))
