"""Predicting with a logged model on raw inputs: image files, folders of images, CSVs.

Preprocessing is exactly what was stored with the model: channels and size from the model
metadata's ``input_shape``, the size policy from ``size_policy``, feature columns by
``feature_names``; normalisation is inside the model itself. Nothing comes from the training
code's defaults. The image formats are the ones ``prepare`` reads. An input or output that is
not a finite number is an error naming the item, never a printed ``nan``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from pipeline.data.images import IMAGE_SUFFIXES
from pipeline.data.readers import decode_image, read_csv_table
from pipeline.errors import UserError
from pipeline.registry.gate import PREDICT_BATCH, load_scorer, model_metadata
from pipeline.registry.gate import predict as _raw_predict

TABLE_SUFFIXES = (".csv",)


@dataclass(frozen=True)
class ModelSpec:
    """The preprocessing contract read from the model's metadata."""

    task: str
    kind: str
    input_shape: list[int]
    class_names: list[str]
    feature_names: list[str]
    size_policy: str

    @classmethod
    def from_metadata(cls, md: dict[str, Any], uri: str) -> ModelSpec:
        missing = [k for k in ("task", "kind", "input_shape") if k not in md]
        if missing:
            raise UserError(
                f"{uri}: the model carries no pipeline metadata ({', '.join(missing)} missing); "
                "predict needs a model logged by this pipeline"
            )
        spec = cls(
            task=str(md["task"]),
            kind=str(md["kind"]),
            input_shape=[int(d) for d in md["input_shape"]],
            class_names=[str(c) for c in md.get("class_names") or []],
            feature_names=[str(c) for c in md.get("feature_names") or []],
            size_policy=str(md.get("size_policy") or "resize"),
        )
        if spec.kind == "image" and len(spec.input_shape) != 3:
            raise UserError(f"{uri}: image model with input_shape {spec.input_shape}; expected "
                            "[C, H, W]")
        if spec.kind == "tabular" and not spec.feature_names:
            raise UserError(f"{uri}: table model without feature_names in its metadata")
        return spec


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def collect_inputs(inputs: list[str], kind: str) -> list[Path]:
    """Expand folders (their JPEGs, sorted by name) and check every file suits the model."""
    wanted = IMAGE_SUFFIXES if kind == "image" else TABLE_SUFFIXES
    what = "image files or folders of images" if kind == "image" else "CSV files"
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            # Class-per-folder trees too (root/<class>/<image>), as prepare's image_folder reads.
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in wanted
            )
            if not found:
                raise UserError(f"{path}: no {'/'.join(wanted)} files in this folder")
            out += found
        elif path.is_file():
            if path.suffix.lower() not in wanted:
                raise UserError(f"{path}: this model takes {what}, not {path.suffix or 'this'}")
            out.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return out


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------
def _predict_finite(model: Any, x: np.ndarray, *, batch_size: int, keys: list[str]) -> np.ndarray:
    """The model's outputs, refusing an input or output that is not a finite number."""
    _check_finite(x, keys, "input")  # before the model runs on it
    outputs = _raw_predict(model, x, batch_size=batch_size)
    _check_finite(outputs, keys, "output")
    return outputs


def _check_finite(values: np.ndarray, keys: list[str], what: str) -> None:
    if not len(values):
        return
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        raise UserError(
            f"{keys[int(np.flatnonzero(bad)[0])]}: the model's {what} is not a finite number "
            "(inf or NaN); check the values of this item"
        )


def _label_lines(names: list[str], keys: list[str], proba: np.ndarray) -> list[str]:
    if proba.ndim != 2 or proba.shape[1] != len(names):
        raise UserError(f"model returned {tuple(proba.shape)}; expected probabilities over "
                        f"{len(names)} classes")
    best = proba.argmax(axis=1)
    return [
        f"{key} {names[int(k)]} {float(proba[i, k]):.4f}"
        for i, (key, k) in enumerate(zip(keys, best, strict=True))
    ]


def predict_images(
    model: Any, spec: ModelSpec, files: list[Path], *, batch_size: int, out: TextIO
) -> int:
    """Decode, predict and print ``file label probability`` per image, a batch at a time."""

    channels, height, width = spec.input_shape
    n = 0
    for chunk in _chunks(files, batch_size):
        x = np.stack([
            decode_image(p, channels=channels, size=(height, width), size_policy=spec.size_policy)
            for p in chunk
        ]).astype(np.float32)
        keys = [str(p) for p in chunk]
        proba = _predict_finite(model, x, batch_size=batch_size, keys=keys)
        out.write("\n".join(_label_lines(spec.class_names, keys, proba)))
        out.write("\n")
        out.flush()
        n += len(chunk)
    return n


def predict_tables(
    model: Any, spec: ModelSpec, files: list[Path], *, batch_size: int, out: TextIO
) -> int:
    """Read the feature columns by name, predict, print ``row prediction`` per row."""

    n = 0
    for path in files:
        x = read_csv_table(path, columns=spec.feature_names, missing="reject")
        keys = [f"{path}:{i}" if len(files) > 1 else str(i) for i in range(1, len(x) + 1)]
        x = np.asarray(x, dtype=np.float32)
        outputs = _predict_finite(model, x, batch_size=batch_size, keys=keys)
        if spec.task == "classification":
            lines = _label_lines(spec.class_names, keys, outputs)
        else:
            values = outputs.reshape(len(x), -1)[:, 0] if outputs.ndim > 1 else outputs
            lines = [f"{k} {float(v):.6g}" for k, v in zip(keys, values, strict=True)]
        if lines:
            out.write("\n".join(lines) + "\n")
            out.flush()
        n += len(lines)
    return n


@dataclass(frozen=True)
class PredictOptions:
    """What ``python -m pipeline.predict`` can set."""

    model_uri: str
    inputs: list[str]  # image files, folders of images, CSV files
    batch_size: int = PREDICT_BATCH


@dataclass(frozen=True)
class PredictResult:
    n_items: int  # lines written


def run_predict(options: PredictOptions, out: TextIO) -> PredictResult:
    """Predict every input with the model; one line per item to ``out``."""
    model_uri, inputs, batch_size = options.model_uri, options.inputs, options.batch_size
    if batch_size < 1:
        raise UserError(f"--batch-size: expected a positive integer, got {batch_size}")
    model = load_scorer(model_uri)
    spec = ModelSpec.from_metadata(model_metadata(model), model_uri)
    files = collect_inputs(inputs, spec.kind)
    predict = predict_images if spec.kind == "image" else predict_tables
    return PredictResult(n_items=predict(model, spec, files, batch_size=batch_size, out=out))
