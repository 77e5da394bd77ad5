"""The main job: ``dse-monitor fit | sweep | compare`` on LightningCLI.

- :class:`~dse_monitor.train.model.ImageClassifier`: a timm backbone from scratch, the
  paper's initialisation (``init_std``), AdamW with warm-up then cosine.
- :class:`~dse_monitor.train.simclr.SimCLRModule`: the contrastive condition (NT-Xent on two
  views, a linear probe on the frozen features).
- :class:`~dse_monitor.train.data.ImageDataModule`: digits (embedded, offline), MNIST,
  CIFAR-10, STL-10, image folders; the permuted-label condition.
- :mod:`~dse_monitor.train.cli`: the ``dse-monitor`` command.
- :mod:`~dse_monitor.train.compare`: runs grouped by a hyperparameter, mean +/- std over seeds.

Needs the ``[train]`` extra (``pip install "dse-monitor[train]"``: lightning, timm,
torchvision, torchmetrics, matplotlib, jsonargparse); importing this package without it
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
