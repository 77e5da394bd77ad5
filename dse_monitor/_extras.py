"""Optional dependencies: what each extra provides, and errors that name the ``pip install`` line.

``pip install dse-monitor`` brings only torch, numpy, scikit-learn and tensorboard. The
callbacks need the Lightning distribution they are written for (``lightning`` or
``pytorch_lightning``, whichever the user has); the main job needs the ``[train]`` extra.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Iterable

TRAIN_EXTRA = 'pip install "dse-monitor[train]"'
# module -> distribution of what ``dse_monitor.train`` imports (``[train]`` in pyproject.toml)
TRAIN_MODULES = {
    "lightning": "lightning",
    "timm": "timm",
    "torchvision": "torchvision",
    "torchmetrics": "torchmetrics",
    "matplotlib": "matplotlib",
    "jsonargparse": "jsonargparse",
    "yaml": "pyyaml",
    "scipy": "scipy",
    "tqdm": "tqdm",
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` line."""


def missing_modules(modules: Iterable[str]) -> list[str]:
    """The top-level modules among ``modules`` that cannot be imported here.

    >>> missing_modules(["os", "surely_not_installed_abc"])
    ['surely_not_installed_abc']
    """
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require_train_extra() -> None:
    """Raise :class:`MissingExtraError` naming ``pip install "dse-monitor[train]"`` if a part is missing.

    >>> require_train_extra()  # silent where "dse-monitor[train]" is installed
    """
    missing = missing_modules(TRAIN_MODULES)
    if missing:
        names = ", ".join(TRAIN_MODULES[name] for name in missing)
        raise MissingExtraError(
            f"the main job (dse_monitor.train, the dse-monitor command) needs {names}, "
            f"not installed here: {TRAIN_EXTRA}",
            name=missing[0],
        )


def import_distribution(module: str, pip_line: str, needed_by: str, instead: str = "") -> ModuleType:
    """Import ``module`` (a Lightning distribution); if it is absent, say which ``pip install`` fixes it.

    Only the absence of ``module`` itself is translated; an error inside an installed
    package propagates unchanged.

    >>> import_distribution("os", "pip install os", "the doctest").sep
    '/'
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module:
            raise
        hint = f" ({instead})" if instead else ""
        raise MissingExtraError(f"{needed_by} needs the {module!r} package, not installed here: {pip_line}{hint}",
                                name=module) from error

