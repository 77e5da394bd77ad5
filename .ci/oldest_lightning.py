"""Print the pins of the oldest ``lightning`` and ``pytorch-lightning`` that dse-monitor admits.

Reads the installed package metadata (what pyproject.toml declares, once installed) so
that the versions CI tests are the lower bounds users get, e.g.
``lightning==2.2.0 pytorch-lightning==2.2.0``. Fails if a distribution has no ``>=`` bound.
"""
from __future__ import annotations

import sys
from importlib.metadata import requires

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

DISTRIBUTIONS = ("lightning", "pytorch-lightning")


def lower_bounds(requirements: list[str]) -> dict[str, Version]:
    """The highest ``>=`` bound each of :data:`DISTRIBUTIONS` gets in ``requirements``."""
    bounds: dict[str, Version] = {}
    for line in requirements:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name in DISTRIBUTIONS:
            for spec in req.specifier:
                if spec.operator == ">=":
                    bounds[name] = max(bounds.get(name, Version(spec.version)), Version(spec.version))
    return bounds


def main() -> int:
    bounds = lower_bounds(requires("dse-monitor") or [])
    missing = [name for name in DISTRIBUTIONS if name not in bounds]
    if missing:
        print(f"oldest_lightning: no '>=' bound for {missing} in dse-monitor's metadata", file=sys.stderr)
        return 1
    # `X.Y` admits X.Y.0: pin the release itself
    print(" ".join(f"{name}=={bounds[name]}" for name in DISTRIBUTIONS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
