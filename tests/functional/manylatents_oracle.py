"""manylatents 0.1.8's DSE code as an oracle, loaded without its package imports.

manylatents declares ~30 dependencies (phate, gudhi, wandb, hydra, ...) and its package
``__init__`` files import most of them; the metric needs numpy and scikit-learn only. The
test extra installs it with ``pip install --no-deps manylatents==0.1.8`` (Makefile), and this
module executes its real files: ``utils/kernel_utils.py``, ``utils/knn.py``,
``utils/exceptions.py`` and ``metrics/diffusion_spectral_entropy.py``, under empty parent
packages. Only its metric-registry decorator (bookkeeping, not math) is replaced by an
identity, and ``manylatents.utils.metrics`` (which the metric imports ``compute_knn`` from, and
which itself re-exports it from ``utils/knn.py``) is given that same function.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

VERSION = "0.1.8"
INSTALL = f"pip install --no-deps manylatents=={VERSION}"


def _root() -> Path:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("manylatents")
    except PackageNotFoundError as err:
        raise RuntimeError(f"the parity tests need manylatents' files: {INSTALL} (make test does)") from err
    if dist.version != VERSION:
        raise RuntimeError(f"manylatents {dist.version} is installed; the parity tests pin {VERSION}: {INSTALL}")
    return Path(str(dist.locate_file("manylatents")))


def load() -> types.SimpleNamespace:
    """The oracle's functions: ``dse`` (DiffusionSpectralEntropy), ``knn_matrix``, ``dense_matrix``."""
    root = _root()
    saved = {k: v for k, v in sys.modules.items() if k == "manylatents" or k.startswith("manylatents.")}
    try:
        for name, sub in (("manylatents", ""), ("manylatents.utils", "utils"), ("manylatents.metrics", "metrics")):
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root / sub) if sub else str(root)]
            sys.modules[name] = pkg
        registry = types.ModuleType("manylatents.metrics.registry")
        registry.register_metric = lambda **_: (lambda fn: fn)
        sys.modules[registry.__name__] = registry
        knn = importlib.import_module("manylatents.utils.knn")
        metrics = types.ModuleType("manylatents.utils.metrics")
        metrics.compute_knn = knn.compute_knn
        sys.modules[metrics.__name__] = metrics
        dse = importlib.import_module("manylatents.metrics.diffusion_spectral_entropy")
        loaded = {k: v for k, v in sys.modules.items() if k == "manylatents" or k.startswith("manylatents.")}

        def entropy(*args, **kwargs):  # it imports compute_knn when called: give it the same modules
            before = {k: sys.modules.get(k) for k in loaded}
            sys.modules.update(loaded)
            try:
                return dse.DiffusionSpectralEntropy(*args, **kwargs)
            finally:
                for k, v in before.items():
                    if v is None:
                        del sys.modules[k]
                    else:
                        sys.modules[k] = v

        return types.SimpleNamespace(
            dse=entropy,
            knn_matrix=dse.compute_diffusion_matrix_knn,
            dense_matrix=dse.compute_diffusion_matrix,
            compute_knn=knn.compute_knn,
        )
    finally:
        for k in [k for k in sys.modules if k == "manylatents" or k.startswith("manylatents.")]:
            del sys.modules[k]
        sys.modules.update(saved)
