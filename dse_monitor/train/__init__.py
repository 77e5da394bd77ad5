"""The main job: ``dse-monitor fit | sweep | compare`` on LightningCLI.

- :class:`~dse_monitor.train.model.ImageClassifier`: a timm backbone from scratch, the
  paper's initialisation (``init_std``), AdamW with warm-up then cosine.
- :class:`~dse_monitor.train.simclr.SimCLRModule`: the contrastive condition (NT-Xent on two
  views, a linear probe on the frozen features).
- :class:`~dse_monitor.train.data.ImageDataModule`: digits (embedded, offline), MNIST,
  CIFAR-10, STL-10, image folders; the permuted-label condition.
- :mod:`~dse_monitor.train.cli`: the ``dse-monitor`` command.
- :mod:`~dse_monitor.train.compare`: runs grouped by a hyperparameter, mean +/- std over seeds.
"""
from .data import DatasetFilesNotFoundError, ImageDataModule, permuted_labels
from .model import ImageClassifier, paper_init_, warmup_cosine_factor
from .simclr import SimCLRModule

__all__ = [
    "DatasetFilesNotFoundError",
    "ImageClassifier",
    "ImageDataModule",
    "paper_init_",
    "permuted_labels",
    "SimCLRModule",
    "warmup_cosine_factor",
]
