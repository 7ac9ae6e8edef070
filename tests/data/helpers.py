"""Tiny raw datasets written to tmp_path: JPEG folders, labels files, CSV tables, params."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from pipeline import prepare


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def write_jpeg(path: Path, img: np.ndarray, quality: int = 95) -> bytes:
    """Write ``img`` (HxW gray or HxWx3 BGR, as OpenCV takes it) as a JPEG; return its bytes."""
    data = encode_jpeg(img, quality)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def pattern(label: int, *, size: tuple[int, int] = (8, 8), channels: int = 1, seed: int = 0):
    """A learnable image: class k lights up row band k; a little noise per image."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = rng.integers(0, 40, size=(h, w)).astype(np.uint8)
    band = max(1, h // 4)
    lo = (label * band) % h
    img[lo : lo + band, :] += 180
    if channels == 3:
        return np.dstack([img, img // 2, 255 - img])  # BGR, each channel different
    return img


def make_jpeg_labels(
    root: Path,
    *,
    parts: dict[str, int] | None = None,
    classes: int = 3,
    size: tuple[int, int] = (8, 8),
    channels: int = 1,
    seed: int = 0,
) -> dict[str, list[tuple[str, int]]]:
    """``root/<part>/00000.jpg`` + ``root/<part>_labels.txt``; returns the (name, label) lists."""
    parts = parts or {"train": 24, "val": 9}
    out = {}
    for p, (part, n) in enumerate(parts.items()):
        entries = []
        for i in range(n):
            label = i % classes
            name = f"{i:05d}.jpg"
            img = pattern(label, size=size, channels=channels, seed=seed * 1000 + p * 100 + i)
            write_jpeg(root / part / name, img)
            entries.append((name, label))
        write_labels(root / f"{part}_labels.txt", entries)
        out[part] = entries
    return out


def write_labels(path: Path, entries: list[tuple[str, int]] | list[str]) -> None:
    lines = [e if isinstance(e, str) else f"{e[0]} {e[1]}" for e in entries]
    path.write_text("".join(line + "\n" for line in lines))


def make_image_folder(
    root: Path,
    *,
    classes: tuple[str, ...] = ("cat", "dog", "emu"),
    per_class: int = 6,
    size: tuple[int, int] = (8, 8),
    channels: int = 1,
) -> None:
    for k, name in enumerate(classes):
        for i in range(per_class):
            img = pattern(k, size=size, channels=channels, seed=k * 100 + i)
            write_jpeg(root / name / f"img{i:03d}.jpg", img)


def make_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ",".join(header) + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows)
    path.write_text(text)


def regression_rows(n: int = 40, seed: int = 0) -> list[list[Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a, b = rng.normal(10, 2), rng.normal(-3, 1)
        rows.append([round(a, 3), round(b, 3), round(3 * a - b + 100, 3)])
    return rows


def jpeg_dataset(**extra: Any) -> dict[str, Any]:
    """The params.yaml entry of the tiny jpeg_labels dataset ``make_jpeg_labels`` writes."""
    image = {"channels": 1, "size": [8, 8], "size_policy": "resize", "on_bad_file": "error"}
    image.update(extra.pop("image", {}))
    entry = {
        "format": "jpeg_labels",
        "root": "raw/tiny",
        "parts": {
            "train": {"images": "train", "labels": "train_labels.txt"},
            "val": {"images": "val", "labels": "val_labels.txt"},
        },
        "image": image,
        "test_fraction": 0.25,
    }
    entry.update(extra)
    return entry


def write_params(project: Path, datasets: dict[str, dict[str, Any]], **prepare_cfg: Any) -> Path:
    """The project's params.yaml with ``datasets`` replaced and prepared by default."""
    path = project / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["datasets"] = datasets
    raw["overrides"] = {}
    raw["dataset"] = next(iter(datasets))
    raw.setdefault("prepare", {}).update(
        {"datasets": list(datasets), "cache_dir": "cache", "workers": 1, **prepare_cfg}
    )
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_prepare(params_path: Path, *datasets: str) -> int:
    argv = ["--params", str(params_path)]
    for name in datasets:
        argv += ["--dataset", name]
    return prepare.main(argv)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}
