"""Networks built from :class:`ModelConfig` and a cache's metadata, and the servable wrapper.

``build_model`` returns a network that takes *normalised* float input ``[N, *input_shape]`` and
returns logits ``[N, K]`` (classification) or ``[N, 1]`` (regression, standardised target units).
``package_model`` wraps it into what is logged and served: raw float32 values in (pixels 0-255 or
raw feature values), probabilities ``[N, K]`` or predictions ``[N]`` in target units out, with the
normalisation statistics held as buffers so nothing outside the module is needed to use it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.data.cache import CacheMeta
from pipeline.errors import UserError

logger = logging.getLogger(__name__)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


def output_size(meta: CacheMeta) -> int:
    """Logits per sample: the class count, or 1 for regression."""
    return meta.num_classes if meta.task == "classification" else 1


def hidden_widths(cfg: ModelConfig) -> list[int]:
    """Hidden layer widths: ``[256, 256]`` (constant) or ``[48, 24]`` (shrinking, min 1)."""
    if cfg.width_schedule == "shrinking":
        return [max(1, cfg.width >> i) for i in range(cfg.hidden_layers)]
    return [cfg.width] * cfg.hidden_layers


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(
            f"model.activation: unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]()


def build_mlp(cfg: ModelConfig, meta: CacheMeta) -> nn.Sequential:
    """Flatten → [Linear → BatchNorm? → activation → Dropout?] × hidden_layers → Linear."""
    n_in = 1
    for d in meta.input_shape:
        n_in *= int(d)
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden_widths(cfg):
        # With batch norm the Linear bias is redundant (BN's shift replaces it).
        layers.append(nn.Linear(n_in, width, bias=not cfg.batch_norm))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(_activation(cfg.activation))
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        n_in = width
    layers.append(nn.Linear(n_in, output_size(meta)))
    return nn.Sequential(*layers)


class _ChannelsLast(nn.Module):
    """Lays the batch out channels-last (NHWC), the layout oneDNN's convolutions, pooling and
    batch norm run fastest in on the CPU (BENCHMARKS.md, "CNN"); the values are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)


def build_cnn(cfg: ModelConfig, meta: CacheMeta) -> nn.Sequential:
    """[Conv3x3 → MaxPool2 → BatchNorm? → activation → Dropout?] × conv_blocks → Linear head.

    Channels start at ``conv_channels`` and double each block; pooling stops once the feature
    map is 1 pixel wide, so small inputs still work. Pooling comes right after the
    convolution: batch norm and the activation then run on a quarter of the values (without
    batch norm the network computes exactly what conv → activation → pool would, since max
    pooling commutes with a monotone activation). Weights and activations are channels-last.
    """
    if len(meta.input_shape) != 3:
        raise UserError(
            f"model.arch: 'cnn' needs image input [C, H, W], but dataset {meta.name!r} has "
            f"input shape {meta.input_shape}; use arch: mlp"
        )
    c_in, h, w = (int(d) for d in meta.input_shape)
    layers: list[nn.Module] = [_ChannelsLast()]
    for block in range(cfg.conv_blocks):
        c_out = cfg.conv_channels * 2**block
        layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not cfg.batch_norm))
        if h >= 2 and w >= 2:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        if cfg.batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(_activation(cfg.activation))
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        c_in = c_out
    layers += [nn.Flatten(), nn.Linear(c_in * h * w, output_size(meta))]
    return nn.Sequential(*layers).to(memory_format=torch.channels_last)


class _RepeatChannels(nn.Module):
    """Grayscale → 3 channels, so an ImageNet-shaped backbone (and its weights) fits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1)


def _load_backbone_weights(net: nn.Module, cfg: ModelConfig, root: Path | None) -> None:
    assert cfg.weights is not None
    path = Path(cfg.weights)
    if not path.is_absolute() and root is not None:
        path = root / path
    if not path.is_file():
        raise UserError(
            f"model.weights: weights file {str(path)!r} not found; nothing is downloaded at run "
            "time: put a torchvision state_dict file there, or set model.weights: null"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(
            f"model.weights: cannot read {str(path)!r} as a state_dict ({exc})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"model.weights: {str(path)!r} does not hold a state_dict")
    # The classification head is replaced, so its weights (any class count) are not used.
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = net.load_state_dict(backbone, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise UserError(
            f"model.weights: {str(path)!r} does not match {cfg.arch} "
            f"(missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]})"
        )
    logger.info("loaded %s backbone weights from %s", cfg.arch, path)


def build_resnet(cfg: ModelConfig, meta: CacheMeta, *, root: Path | None = None) -> nn.Module:
    """A torchvision ResNet with a new head; weights from a local file or random."""
    # Imported here, not at the top: torchvision adds ~2 s to every start-up (measured with
    # `python -c "import torch, torchvision.models"`), and only the resnet archs need it.
    from torchvision import models as tv_models

    if len(meta.input_shape) != 3 or int(meta.input_shape[0]) not in (1, 3):
        raise UserError(
            f"model.arch: {cfg.arch!r} needs 1- or 3-channel images, but dataset {meta.name!r} "
            f"has input shape {meta.input_shape}; use arch: mlp"
        )
    net = getattr(tv_models, cfg.arch)(weights=None)
    if cfg.weights is not None:
        _load_backbone_weights(net, cfg, root)
    if cfg.freeze_backbone:
        for p in net.parameters():
            p.requires_grad_(False)
    head: nn.Module = nn.Linear(net.fc.in_features, output_size(meta))
    if cfg.dropout > 0:
        head = nn.Sequential(nn.Dropout(cfg.dropout), head)
    net.fc = head  # a fresh head always trains
    if int(meta.input_shape[0]) == 1:
        return nn.Sequential(_RepeatChannels(), net)
    return net


# Architectures that take images [C, H, W] only; an MLP takes any input.
IMAGE_ARCHS = ("cnn", "resnet18", "resnet50")


def arch_fits(arch: str, meta: CacheMeta) -> bool:
    """Whether ``arch`` can take the dataset's input (images, or a table's features)."""
    return arch not in IMAGE_ARCHS or len(meta.input_shape) == 3


def build_model(cfg: ModelConfig, meta: CacheMeta, *, root: Path | None = None) -> nn.Module:
    """The network ``cfg`` describes for the dataset ``meta`` describes.

    Args:
        cfg: the ``model`` section of params.
        meta: the cache metadata (input shape, task, class count).
        root: the project root a relative ``model.weights`` path is resolved against.
    """
    if meta.task == "classification" and meta.num_classes < 2:
        raise UserError(f"dataset {meta.name!r}: classification needs ≥ 2 classes")
    if cfg.arch == "mlp":
        return build_mlp(cfg, meta)
    if cfg.arch == "cnn":
        return build_cnn(cfg, meta)
    if cfg.arch in ("resnet18", "resnet50"):
        return build_resnet(cfg, meta, root=root)
    raise UserError(
        f"model.arch: unknown architecture {cfg.arch!r}; allowed: mlp, cnn, resnet18, resnet50"
    )


# --------------------------------------------------------------------------------------------
# Normalisation: one affine map shared by the engine (per batch) and the packaged model
# --------------------------------------------------------------------------------------------
def input_affine(meta: CacheMeta) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``normalised = raw * scale + shift``, shaped to broadcast.

    Images: ``(raw / 255 - mean) / std`` per channel; features: ``(raw - mean) / std`` per
    feature. A zero std (a constant feature) is treated as 1.
    """
    mean = torch.tensor(meta.mean, dtype=torch.float64)
    std = torch.tensor(meta.std, dtype=torch.float64)
    std = torch.where(std > 0, std, torch.ones_like(std))
    unit = 255.0 if meta.kind == "image" else 1.0
    scale = 1.0 / (unit * std)
    shift = -mean / std
    shape = [1, -1] + [1] * (len(meta.input_shape) - 1)
    return scale.float().reshape(shape), shift.float().reshape(shape)


class PackagedModel(nn.Module):
    """Raw float32 input → normalise → network → probabilities or target-unit predictions."""

    scale: torch.Tensor
    shift: torch.Tensor
    target_mean: torch.Tensor
    target_std: torch.Tensor

    def __init__(self, net: nn.Module, meta: CacheMeta) -> None:
        super().__init__()
        self.net = net
        self.classification = meta.task == "classification"
        scale, shift = input_affine(meta)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.register_buffer("target_mean", torch.tensor(float(meta.target_mean)))
        self.register_buffer("target_std", torch.tensor(float(meta.target_std or 1.0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same two ops as the engine's per-batch normalisation.
        out = self.net(x.mul(self.scale).add(self.shift))
        if self.classification:
            return torch.softmax(out, dim=1)
        return out[:, 0] * self.target_std + self.target_mean


def package_model(net: nn.Module, meta: CacheMeta) -> nn.Module:
    """The servable model around ``net`` (which it wraps, not copies), in eval mode."""
    return PackagedModel(net, meta).eval()


def model_metadata(meta: CacheMeta) -> dict[str, Any]:
    """What a user of the logged model needs to know; stored in the MLmodel file."""
    return {
        "task": meta.task,
        "kind": meta.kind,
        "input_shape": [int(d) for d in meta.input_shape],
        "input": (
            "float32 raw pixel values 0-255, [N, C, H, W]"
            if meta.kind == "image"
            else "float32 raw feature values, [N, F], columns in feature_names order"
        ),
        "output": (
            "class probabilities [N, K], columns in class_names order"
            if meta.task == "classification"
            else f"predicted {meta.target_name} [N] in target units"
        ),
        "class_names": list(meta.class_names),
        "feature_names": list(meta.feature_names),
        "target_name": meta.target_name,
        "dataset": meta.name,
        "fingerprint": meta.fingerprint,
        "size_policy": meta.size_policy,
        "mean": [float(v) for v in meta.mean],
        "std": [float(v) for v in meta.std],
        "target_mean": float(meta.target_mean),
        "target_std": float(meta.target_std),
    }


def meta_from_metadata(md: dict[str, Any]) -> CacheMeta:
    """The cache metadata :func:`model_metadata` kept, as what :func:`build_model` and
    :func:`package_model` read (the counts and split of the data are not kept: zero)."""
    return CacheMeta(
        name=str(md["dataset"]), task=md["task"], kind=md["kind"],
        input_shape=[int(d) for d in md["input_shape"]],
        class_names=[str(c) for c in md["class_names"]],
        feature_names=[str(c) for c in md["feature_names"]],
        target_name=str(md["target_name"]), n_train=0, n_test=0, counts={},
        mean=[float(v) for v in md["mean"]], std=[float(v) for v in md["std"]],
        target_mean=float(md["target_mean"]), target_std=float(md["target_std"]),
        split_seed=0, fingerprint=str(md["fingerprint"]), source_format="",
        size_policy=str(md["size_policy"]),
    )
