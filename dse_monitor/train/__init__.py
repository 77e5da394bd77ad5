"""The main job: ``dse-monitor fit | sweep | compare | score`` on LightningCLI.

- :class:`~dse_monitor.train.model.ImageClassifier`: a timm backbone from scratch, the
  paper's initialisation (``init_std``), AdamW with warm-up then cosine.
- :class:`~dse_monitor.train.simclr.SimCLRModule`: the contrastive condition (NT-Xent on two
  views, a linear probe on the frozen features).
- :class:`~dse_monitor.train.data.ImageDataModule`: digits (embedded, offline), MNIST,
  CIFAR-10, STL-10, image folders (readers in :mod:`~dse_monitor.train.datasets`, transforms
  in :mod:`~dse_monitor.train.transforms`); the permuted-label condition.
- :mod:`~dse_monitor.train.cli`: the ``dse-monitor`` command (:mod:`~dse_monitor.train.fit`,
  :mod:`~dse_monitor.train.sweep`, :mod:`~dse_monitor.train.score_cli`).
- :mod:`~dse_monitor.train.compare`: runs (read by :mod:`~dse_monitor.train.runs`) grouped by a
  hyperparameter, mean +/- std over seeds, drawn by :mod:`~dse_monitor.train.plots`;
  :mod:`~dse_monitor.train.analyses`: the information plane, the layer heat map, correlations.

Needs the ``[train]`` extra (``pip install "dse-monitor[train]"``: lightning, timm,
torchvision, torchmetrics, matplotlib, jsonargparse, scipy, tqdm); importing this package without it
raises an ``ImportError`` that names that line.
"""
from .._extras import require_train_extra

require_train_extra()

from .data import DatasetFilesNotFoundError, ImageDataModule, permuted_labels  # noqa: E402
from .model import ImageClassifier, paper_init_, warmup_cosine_factor  # noqa: E402
from .simclr import SimCLRModule  # noqa: E402

__all__ = [
    "DatasetFilesNotFoundError",
    "ImageClassifier",
    "ImageDataModule",
    "paper_init_",
    "permuted_labels",
    "SimCLRModule",
    "warmup_cosine_factor",
]
