"""Model construction: shapes for each architecture and switch, layer order, packaging."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelConfig
from pipeline.data.cache import CacheMeta
from pipeline.errors import UserError
from pipeline.training.models import (
    PackagedModel,
    build_model,
    hidden_widths,
    input_affine,
    model_metadata,
    package_model,
)


def image_meta(channels: int = 1, size: int = 28, classes: int = 10) -> CacheMeta:
    return CacheMeta(
        name="img", task="classification", kind="image", input_shape=[channels, size, size],
        class_names=[str(k) for k in range(classes)], feature_names=[], target_name="label",
        n_train=10, n_test=0, counts={}, mean=[0.2] * channels, std=[0.3] * channels,
        target_mean=0.0, target_std=1.0, split_seed=0, fingerprint="fp-img",
        source_format="synthetic",
    )


def table_meta(features: int = 5) -> CacheMeta:
    return CacheMeta(
        name="tab", task="regression", kind="tabular", input_shape=[features], class_names=[],
        feature_names=[f"f{i}" for i in range(features)], target_name="y", n_train=10, n_test=0,
        counts={}, mean=[1.0] * features, std=[2.0] * (features - 1) + [0.0],
        target_mean=150.0, target_std=20.0, split_seed=0, fingerprint="fp-tab",
        source_format="synthetic",
    )


def linear_shapes(net: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]


def test_mlp_constant_is_784_256_256_10() -> None:
    net = build_model(ModelConfig(hidden_layers=2, width=256), image_meta())
    assert linear_shapes(net) == [(784, 256), (256, 256), (256, 10)]
    assert net(torch.randn(4, 1, 28, 28)).shape == (4, 10)


def test_mlp_shrinking_is_784_48_24_10() -> None:
    cfg = ModelConfig(hidden_layers=2, width=48, width_schedule="shrinking")
    assert linear_shapes(build_model(cfg, image_meta())) == [(784, 48), (48, 24), (24, 10)]
    # Halving stops at one unit.
    deep = ModelConfig(hidden_layers=5, width=4, width_schedule="shrinking")
    assert hidden_widths(deep) == [4, 2, 1, 1, 1]


def test_mlp_without_hidden_layers_is_linear() -> None:
    net = build_model(ModelConfig(hidden_layers=0), image_meta())
    assert linear_shapes(net) == [(784, 10)]


def test_regression_outputs_one_column() -> None:
    net = build_model(ModelConfig(hidden_layers=1, width=8), table_meta())
    assert net(torch.randn(3, 5)).shape == (3, 1)


def test_batch_norm_and_dropout_order() -> None:
    cfg = ModelConfig(hidden_layers=2, width=16, batch_norm=True, dropout=0.25,
                      activation="gelu")
    types = [type(m) for m in build_model(cfg, image_meta())]
    hidden = [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Dropout]
    assert types == [nn.Flatten, *hidden, *hidden, nn.Linear]
    plain = [type(m) for m in build_model(ModelConfig(hidden_layers=1, width=16), image_meta())]
    assert plain == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    drop = next(m for m in build_model(cfg, image_meta()) if isinstance(m, nn.Dropout))
    assert drop.p == 0.25


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "tanh", "leaky_relu"])
def test_each_activation(activation: str) -> None:
    net = build_model(ModelConfig(hidden_layers=1, width=8, activation=activation), table_meta())
    assert net(torch.randn(2, 5)).shape == (2, 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_cnn_shapes_and_block_order(channels: int) -> None:
    cfg = ModelConfig(arch="cnn", conv_blocks=2, conv_channels=4, batch_norm=True, dropout=0.1)
    net = build_model(cfg, image_meta(channels=channels, size=12, classes=3))
    assert net(torch.randn(2, channels, 12, 12)).shape == (2, 3)
    types = [type(m) for m in net][1:]  # after the channels-last layout
    # Pooling first: batch norm and the activation work on a quarter of the values.
    block = [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU, nn.Dropout]
    assert types == [*block, *block, nn.Flatten, nn.Linear]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last)
               for c in net if isinstance(c, nn.Conv2d))


def test_cnn_without_batch_norm_pools_before_the_activation_to_the_same_values() -> None:
    cfg = ModelConfig(arch="cnn", conv_blocks=2, conv_channels=4, batch_norm=False)
    net = build_model(cfg, image_meta(channels=1, size=12, classes=3)).eval()
    x = torch.randn(5, 1, 12, 12)
    h = x
    for m in net:  # the textbook order: conv, activation, pool
        if isinstance(m, nn.Conv2d):
            h = F.max_pool2d(F.relu(m(h)), 2)
        elif isinstance(m, nn.Flatten | nn.Linear):
            h = m(h)
    torch.testing.assert_close(net(x), h)
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8]  # channels double per block


def test_cnn_on_tiny_images_stops_pooling() -> None:
    cfg = ModelConfig(arch="cnn", conv_blocks=4, conv_channels=2)
    net = build_model(cfg, image_meta(size=4, classes=2))
    assert net(torch.randn(2, 1, 4, 4)).shape == (2, 2)


def test_cnn_rejects_tables() -> None:
    with pytest.raises(UserError, match="model.arch"):
        build_model(ModelConfig(arch="cnn"), table_meta())


@pytest.mark.parametrize("channels", [1, 3])
def test_resnet18_head_and_channels(channels: int) -> None:
    net = build_model(ModelConfig(arch="resnet18"), image_meta(channels=channels, size=16,
                                                               classes=4))
    assert net(torch.randn(2, channels, 16, 16)).shape == (2, 4)


def test_resnet50_builds_with_new_head() -> None:
    net = build_model(ModelConfig(arch="resnet50", dropout=0.2), image_meta(3, 16, 5))
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    assert isinstance(net.fc, nn.Sequential) and isinstance(net.fc[0], nn.Dropout)


def test_resnet_freeze_backbone_trains_head_only() -> None:
    net = build_model(ModelConfig(arch="resnet18", freeze_backbone=True), image_meta(3, 16, 4))
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}


def test_resnet_missing_weights_file_names_the_key(tmp_path: Path) -> None:
    cfg = ModelConfig(arch="resnet18", weights="weights/nope.pth")
    with pytest.raises(UserError, match=r"model\.weights.*nope\.pth"):
        build_model(cfg, image_meta(3, 16, 4), root=tmp_path)


def test_resnet_loads_local_weights(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(1)
    source = resnet18(weights=None)  # stands in for downloaded ImageNet weights
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    cfg = ModelConfig(arch="resnet18", weights="r18.pth")
    net = build_model(cfg, image_meta(1, 16, 4), root=tmp_path)  # grayscale: repeated to RGB
    backbone = net[1]
    assert torch.equal(backbone.conv1.weight, source.conv1.weight)
    assert backbone.fc.out_features == 4
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 4)


def test_resnet_rejects_a_foreign_weights_file(tmp_path: Path) -> None:
    torch.save({"something.else": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="does not match"):
        build_model(ModelConfig(arch="resnet18", weights=str(tmp_path / "bad.pth")),
                    image_meta(3, 16, 4))


def test_package_classification_outputs_probabilities() -> None:
    meta = image_meta(size=8, classes=3)
    net = build_model(ModelConfig(hidden_layers=1, width=8), meta).eval()
    packaged = package_model(net, meta)
    assert isinstance(packaged, PackagedModel) and not packaged.training
    raw = torch.randint(0, 256, (4, 1, 8, 8)).float()
    probs = packaged(raw)
    assert probs.shape == (4, 3)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(4))
    expected = torch.softmax(net((raw / 255 - 0.2) / 0.3), dim=1)
    torch.testing.assert_close(probs, expected)


def test_package_regression_outputs_target_units() -> None:
    meta = table_meta()
    net = build_model(ModelConfig(hidden_layers=1, width=8), meta).eval()
    raw = torch.randn(6, 5) * 3 + 1
    out = package_model(net, meta)(raw)
    assert out.shape == (6,)
    std = torch.tensor([2.0, 2.0, 2.0, 2.0, 1.0])  # zero std is treated as 1
    expected = net((raw - 1.0) / std)[:, 0] * 20.0 + 150.0
    torch.testing.assert_close(out, expected)


def test_input_affine_shapes() -> None:
    scale, shift = input_affine(image_meta(channels=3))
    assert scale.shape == shift.shape == (1, 3, 1, 1)
    scale, shift = input_affine(table_meta())
    assert scale.shape == (1, 5)


def test_model_metadata_has_what_inference_needs() -> None:
    meta = image_meta()
    info = model_metadata(meta)
    for key in ("task", "kind", "input_shape", "class_names", "feature_names", "target_name",
                "dataset", "fingerprint", "size_policy"):
        assert key in info
    assert info["dataset"] == "img" and info["input_shape"] == [1, 28, 28]
    assert model_metadata(dataclasses.replace(meta, size_policy="reject"))["size_policy"] == (
        "reject"
    )
