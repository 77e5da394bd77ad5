"""Layer sets: the "blocks" preset on timm / torchvision families, globs, order, duplicates, the info line."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from dse_monitor.capture import FeatureCapture, LayerNotFoundError, describe_layers, find_blocks, resolve_layers


def _take(model: nn.Module, layers, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad(), FeatureCapture(layers) as cap:
        model(x)
        return cap.take()


@pytest.fixture(scope="module")
def tv_resnet():
    return torchvision.models.resnet18(num_classes=2)


def test_blocks_of_timm_resnet_are_layer1_to_4_with_their_pooled_outputs():
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=4).eval()
    layers = resolve_layers(model, "blocks")
    assert [layer.name for layer in layers] == ["layer1", "layer2", "layer3", "layer4"]
    x = torch.randn(3, 3, 32, 32)
    feats = _take(model, layers, x)
    with torch.no_grad():  # by hand, along timm's forward_features
        h = model.maxpool(model.act1(model.bn1(model.conv1(x))))  # resnet10t: a deep stem
        h = model.layer3(model.layer2(model.layer1(h)))
    torch.testing.assert_close(feats["layer3"], h.mean(dim=(2, 3)), rtol=0, atol=1e-6)
    assert feats["layer4"].shape == (3, model.num_features)


def test_blocks_of_timm_vit_are_its_blocks_with_token_means():
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32, patch_size=8, depth=3
    ).eval()
    layers = resolve_layers(model, ["blocks", "penultimate"])
    assert [layer.name for layer in layers] == ["blocks.0", "blocks.1", "blocks.2", "penultimate"]
    x = torch.randn(2, 3, 32, 32)
    feats = _take(model, layers, x)
    with torch.no_grad():
        tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        tokens = model.blocks[1](model.blocks[0](tokens))
    assert tokens.shape == (2, 17, 192)  # 16 patches and the class token
    torch.testing.assert_close(feats["blocks.1"], tokens.mean(dim=1), rtol=0, atol=1e-6)


def test_blocks_of_other_families_and_of_a_wrapper(tv_resnet):
    convnext = timm.create_model("convnext_atto", pretrained=False, num_classes=2)
    assert [layer.name for layer in find_blocks(convnext)] == [f"stages.{i}" for i in range(4)]
    tv_vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=2
    )
    assert [layer.name for layer in find_blocks(tv_vit)] == ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    tv_convnext = ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=2)
    assert [layer.name for layer in find_blocks(tv_convnext)] == ["features.1", "features.3", "features.5"]

    class Wrapper(nn.Module):  # e.g. a LightningModule holding the network as `model`
        def __init__(self):
            super().__init__()
            self.loss = nn.CrossEntropyLoss()
            self.model = tv_resnet

    assert [layer.name for layer in find_blocks(Wrapper())] == [f"model.layer{i}" for i in range(1, 5)]
    with pytest.raises(LayerNotFoundError, match=r"found no stages or blocks.*'0', '1'.*glob"):
        find_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))


@pytest.mark.parametrize("family", ["timm", "torchvision"])
def test_channels_last_swin_stages_are_pooled_over_their_spatial_grid(family):
    torch.manual_seed(0)
    if family == "timm":
        model = timm.create_model(
            "swin_tiny_patch4_window7_224", pretrained=False, num_classes=2, img_size=32, window_size=2,
            embed_dim=16, depths=(1, 1), num_heads=(1, 1),
        ).eval()
        names = ["layers.0", "layers.1"]
    else:
        model = torchvision.models.SwinTransformer(
            patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2], num_classes=2
        ).eval()
        names = ["features.1", "features.3"]
    layers = find_blocks(model)
    assert [layer.name for layer in layers] == names and all(layer.channels_last for layer in layers)
    x = torch.randn(2, 3, 32, 32)
    seen = {}
    handle = layers[1].module.register_forward_hook(lambda m, a, out: seen.update(out=out))
    feats = _take(model, layers, x)
    handle.remove()
    assert seen["out"].shape == (2, 4, 4, 32)  # [B, H, W, C]
    torch.testing.assert_close(feats[names[1]], seen["out"].mean(dim=(1, 2)), rtol=0, atol=1e-6)


def test_globs_match_within_one_name_part_in_definition_order_without_duplicates(tv_resnet):
    model = tv_resnet
    assert [layer.name for layer in resolve_layers(model, "layer*")] == ["layer1", "layer2", "layer3", "layer4"]
    assert [layer.name for layer in resolve_layers(model, "layer1.*")] == ["layer1.0", "layer1.1"]
    convs = resolve_layers(model, "**.conv1")
    assert [layer.name for layer in convs] == ["conv1"] + [f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)]
    mixed = resolve_layers(model, ["penultimate", "layer4", "layer[34]", "blocks"])
    assert [layer.name for layer in mixed] == ["layer1", "layer2", "layer3", "layer4", "penultimate"]
    assert describe_layers(mixed) == (
        "DSEMonitor: layers resolved: layer1, layer2, layer3, layer4, penultimate (input of fc)"
    )
    with pytest.raises(LayerNotFoundError, match=r"'lyer\*' matches no module.*'layer1'"):
        resolve_layers(model, "lyer*")
    with pytest.raises(LayerNotFoundError, match="non-empty"):
        resolve_layers(model, [])


def test_penultimate_errors_name_the_modules_when_nothing_fits():
    class Convs(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 2, 1)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            return self.pool(self.stem(x))

    model = Convs()
    with pytest.raises(LayerNotFoundError, match=r"no nn.Linear.*'stem', 'pool'"):
        resolve_layers(model, "penultimate", lambda: model(torch.zeros(1, 1, 2, 2)))
    with pytest.raises(LayerNotFoundError, match=r"example forward pass.*'stem', 'pool'"):
        resolve_layers(model, "penultimate")
