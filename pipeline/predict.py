"""Predict with a logged or registered model on raw inputs: JPEG files, folders of JPEGs, CSVs.

Reads the model (``--model``: ``models:/<name>@champion``, ``models:/<name>/<version>``,
``runs:/<run_id>/model`` or a local model folder) and the raw inputs; writes one line per item
to stdout:

- image models: ``<file> <label> <probability>``;
- table models: ``<row> <prediction>`` (regression, target units) or ``<row> <label>
  <probability>`` (classification); ``<row>`` is the 1-based data row (``file:row`` when several
  CSVs are given).

Preprocessing is exactly what was stored with the model: channels and size from the model
metadata's ``input_shape``, the size policy from ``size_policy``, feature columns by
``feature_names``; normalisation is inside the model itself. Nothing comes from the training
code's defaults. Predictions run in batches.

    python -m pipeline.predict --model models:/pipeline-digits@champion img1.jpg folder/ ...
    python -m pipeline.predict --model models:/pipeline-diabetes@champion new_rows.csv
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from pipeline import cli
from pipeline.errors import UserError
from pipeline.registry.gate import quiet_downloads

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg")
TABLE_SUFFIXES = (".csv",)
DEFAULT_BATCH = 256


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
    what = "JPEG files or folders of JPEGs" if kind == "image" else "CSV files"
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in wanted
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
    from pipeline.data.readers import decode_image
    from pipeline.registry import gate as registry

    channels, height, width = spec.input_shape
    n = 0
    for chunk in _chunks(files, batch_size):
        x = np.stack([
            decode_image(p, channels=channels, size=(height, width), size_policy=spec.size_policy)
            for p in chunk
        ]).astype(np.float32)
        proba = registry.predict(model, x, batch_size=batch_size)
        out.write("\n".join(_label_lines(spec.class_names, [str(p) for p in chunk], proba)))
        out.write("\n")
        out.flush()
        n += len(chunk)
    return n


def predict_tables(
    model: Any, spec: ModelSpec, files: list[Path], *, batch_size: int, out: TextIO
) -> int:
    """Read the feature columns by name, predict, print ``row prediction`` per row."""
    from pipeline.data.readers import read_csv_table
    from pipeline.registry import gate as registry

    n = 0
    for path in files:
        x = read_csv_table(path, columns=spec.feature_names, missing="reject")
        keys = [f"{path}:{i}" if len(files) > 1 else str(i) for i in range(1, len(x) + 1)]
        outputs = registry.predict(model, np.asarray(x, dtype=np.float32), batch_size=batch_size)
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


def run_predict(
    model_uri: str, inputs: list[str], *, batch_size: int = DEFAULT_BATCH, out: TextIO
) -> int:
    """Predict every input with the model at ``model_uri``; returns the number of items."""
    from pipeline.registry import gate as registry

    if batch_size < 1:
        raise UserError(f"--batch-size: expected a positive integer, got {batch_size}")
    model = registry.load_model(model_uri)
    spec = ModelSpec.from_metadata(registry.model_metadata(model), model_uri)
    files = collect_inputs(inputs, spec.kind)
    if spec.kind == "image":
        return predict_images(model, spec, files, batch_size=batch_size, out=out)
    return predict_tables(model, spec, files, batch_size=batch_size, out=out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description="Predict with a logged model on raw JPEGs (files or folders) or CSV files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", required=True,
        help="model URI, e.g. models:/pipeline-digits@champion or runs:/RUN_ID/model",
    )
    parser.add_argument(
        "--params", default="params.yaml",
        help="params file: where the MLflow store is (MLFLOW_TRACKING_URI overrides it)",
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="items per batch")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="JPEG file, folder, or CSV")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose)
    quiet_downloads()

    def body() -> int:
        params_path = Path(args.params)
        if params_path.is_file():
            from pipeline.config import load_params
            from pipeline.tracking import runs as tracking

            tracking.configure(load_params(params_path))
        elif args.params != "params.yaml":
            raise UserError(f"{params_path}: params file not found")
        n = run_predict(args.model, args.inputs, batch_size=args.batch_size, out=sys.stdout)
        logger.info("predicted %d item(s) with %s", n, args.model)
        return 0

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
