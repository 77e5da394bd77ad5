"""Capturing representations: layers, hooks, pooling, the probe set and the forward call.

Knows torch modules and datasets, not Lightning. The data path of one measurement:

    probe subset (fixed indices)  -> :func:`probe_loader`
    the batch, as training calls  -> :func:`split_batch`, :func:`call_module`
    compiled models run eagerly   -> :func:`eager`
    forward pass with hooks       -> :func:`resolve_layers`, :class:`FeatureCapture`
    pooled features [N, D]        -> :func:`pool_features` (masked for token sequences)
"""
from .compiled import eager, unwrap, user_name
from .forward import ProbeBatch, call_module, split_batch, unpack_batch
from .hooks import FeatureCapture, capture, eval_mode
from .layer_sets import describe_layers, find_blocks, match_modules, resolve_layers
from .layers import LayerNotFoundError, Layer, find_module, last_linear_in_forward, resolve_layer
from .pooling import POOLINGS, check_mask, pool_features
from .probe import choose_indices, first_dataloader, probe_loader, resize_inputs, to_device

__all__ = [
    "FeatureCapture",
    "Layer",
    "LayerNotFoundError",
    "POOLINGS",
    "ProbeBatch",
    "call_module",
    "capture",
    "check_mask",
    "choose_indices",
    "describe_layers",
    "eager",
    "eval_mode",
    "find_blocks",
    "find_module",
    "first_dataloader",
    "last_linear_in_forward",
    "match_modules",
    "pool_features",
    "probe_loader",
    "resize_inputs",
    "resolve_layer",
    "resolve_layers",
    "split_batch",
    "to_device",
    "unpack_batch",
    "unwrap",
    "user_name",
]
