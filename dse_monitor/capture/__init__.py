"""Capturing representations: layers, hooks, pooling and the probe set.

Knows torch modules and datasets, not Lightning. The data path of one measurement:

    probe subset (fixed indices)  -> :func:`probe_loader`, :func:`unpack_batch`
    forward pass with hooks       -> :func:`resolve_layer`, :func:`capture`
    pooled features [N, D]        -> :func:`pool_features`
"""
from .hooks import FeatureCapture, capture, eval_mode
from .layers import LayerNotFoundError, Layer, find_module, last_linear_in_forward, resolve_layer
from .pooling import pool_features
from .probe import choose_indices, first_dataloader, probe_loader, resize_inputs, to_device, unpack_batch

__all__ = [
    "FeatureCapture",
    "Layer",
    "LayerNotFoundError",
    "capture",
    "choose_indices",
    "eval_mode",
    "find_module",
    "first_dataloader",
    "last_linear_in_forward",
    "pool_features",
    "probe_loader",
    "resize_inputs",
    "resolve_layer",
    "to_device",
    "unpack_batch",
]
