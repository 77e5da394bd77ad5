"""The ``dse-monitor`` command (and ``python -m dse_monitor``): the main job's CLI, or one line
naming the missing ``[train]`` extra.

This module is the program's entry, imported by nothing in the package, so it is the one
place outside ``dse_monitor.train`` that imports it (besides the package face's lazy
``__getattr__``).
"""
from __future__ import annotations

import sys

from ._extras import MissingExtraError


def main() -> int:
    """:func:`dse_monitor.train.cli.main`, or ``dse-monitor: ... pip install "dse-monitor[train]"`` and 1."""
    try:
        from .train.cli import main as train_main
    except MissingExtraError as error:
        print(f"dse-monitor: {error}", file=sys.stderr)
        return 1
    return train_main()


if __name__ == "__main__":
    sys.exit(main())
