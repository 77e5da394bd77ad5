"""Masked pooling of token sequences: real tokens only, left or right padding, clear errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dse_monitor.capture import FeatureCapture, pool_features, resolve_layer

LENGTHS = [3, 1, 6]


def _padded(side: str, width: int, real: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``real`` sequences [L_b, C] padded with large junk (and a nan) to ``width`` tokens on ``side``."""
    x = torch.full((len(real), width, real[0].shape[1]), 1e6)
    x[:, :, 0] = float("nan")
    mask = torch.zeros(len(real), width, dtype=torch.long)
    for b, r in enumerate(real):
        span = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        x[b, span], mask[b, span] = r, 1
    return x, mask


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("pooling", ["mean", "cls", "last_token"])
def test_masked_pooling_reads_real_tokens_only_whatever_the_padding(side, pooling):
    torch.manual_seed(0)
    real = [torch.randn(n, 5) for n in LENGTHS]
    expected = torch.stack([{"mean": r.mean(0), "cls": r[0], "last_token": r[-1]}[pooling] for r in real])
    for width in (6, 16, 64):
        x, mask = _padded(side, width, real)
        torch.testing.assert_close(pool_features(x, pooling, mask), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(pool_features(x, pooling, mask.bool()), expected, rtol=0, atol=1e-6)


def test_without_a_mask_last_token_is_the_last_position_and_vectors_ignore_the_mask():
    x = torch.randn(2, 4, 3)
    torch.testing.assert_close(pool_features(x, "last_token"), x[:, -1])
    vec = torch.randn(2, 3)  # e.g. a pooler output: one vector per sample already
    torch.testing.assert_close(pool_features(vec, "mean", torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]])), vec)


def test_bad_masks_and_shapes_are_named():
    x = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"\[B, T\] = \[2, 4\].*got \[2, 5\]"):
        pool_features(x, "mean", torch.ones(2, 5))
    with pytest.raises(ValueError, match="0 / -inf"):
        pool_features(x, "mean", torch.tensor([[0.0, -1e9, 0.0, 0.0]] * 2))
    with pytest.raises(ValueError, match="without any real token"):
        pool_features(x, "mean", torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="padding length"):
        pool_features(x, "flatten", torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"needs token sequences \[B, T, C\].*\[2, 3, 4, 4\]"):
        pool_features(torch.randn(2, 3, 4, 4), "last_token")


def test_a_pooling_callable_naming_attention_mask_receives_it():
    x, mask = torch.randn(2, 4, 3), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])

    def masked_max(t, attention_mask):
        return t.masked_fill(~attention_mask.bool()[..., None], float("-inf")).amax(dim=1)

    torch.testing.assert_close(pool_features(x, masked_max, mask), torch.stack([x[0, :2].amax(0), x[1].amax(0)]))
    torch.testing.assert_close(pool_features(x, lambda t: t.sum(1), mask), x.sum(1))  # no such argument: x only


def test_feature_capture_pools_with_the_current_mask_and_names_the_layer_on_error():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh())  # applied to every token
    x = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    with torch.no_grad(), FeatureCapture([resolve_layer(net, "1")]) as cap:
        cap.attention_mask = mask
        out = net(x)
        got = cap.take()["1"]
        torch.testing.assert_close(got, torch.stack([out[0, :3].mean(0), out[1, :1].mean(0)]))
        cap.attention_mask = torch.ones(2, 7)  # a mask that belongs to another batch
        with pytest.raises(ValueError, match=r"layer '1'.*\[B, T\] = \[2, 5\]"):
            net(x)
    assert cap.attention_mask is None  # cleared with the hooks
