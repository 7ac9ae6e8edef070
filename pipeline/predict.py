"""Predict with a logged or registered model on raw inputs: image files, folders of them, CSVs.

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
code's defaults. Predictions run in batches. Only PyTorch models in the pt2 format load: nothing
is unpickled (``--check-model URI`` checks a model's format without predicting, as
``make serve`` does before serving it).

    python -m pipeline.predict --model models:/pipeline-digits@champion img1.jpg folder/ ...
    python -m pipeline.predict --model models:/pipeline-diabetes@champion new_rows.csv
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline import cli, tracking
from pipeline.config import PARAMS_FILE, load_params
from pipeline.errors import UserError
from pipeline.registry.gate import PREDICT_BATCH
from pipeline.registry.inference import PredictOptions, run_predict

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description="Predict with a logged model on raw images (files or folders) or CSV files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--model",
        help="model URI, e.g. models:/pipeline-digits@champion or runs:/RUN_ID/model",
    )
    which.add_argument(
        "--check-model", metavar="URI",
        help="only check that the model is one this project loads (pt2, no pickle); exit 0 if so",
    )
    parser.add_argument(
        "--params", default=PARAMS_FILE,
        help="params file: where the MLflow store is (MLFLOW_TRACKING_URI overrides it)",
    )
    parser.add_argument("--batch-size", type=int, default=PREDICT_BATCH, help="items per batch")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="image file (JPEG, PNG), folder, or CSV"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model and not args.inputs:
        parser.error("the following arguments are required: INPUT")
    cli.setup_logging(args.verbose)

    def body() -> int:
        tracking.quiet_mlflow()
        params_path = Path(args.params)
        if params_path.is_file():
            tracking.configure(load_params(params_path))
        elif args.params != PARAMS_FILE:
            raise UserError(f"{params_path}: params file not found")
        if args.check_model:
            from pipeline.tracking.models import check_format

            check_format(args.check_model)
            print(f"{args.check_model}: a pt2 PyTorch model; it loads without unpickling")
            return 0
        options = PredictOptions(args.model, args.inputs, batch_size=args.batch_size)
        result = run_predict(options, out=sys.stdout)
        logger.info("predicted %d item(s) with %s", result.n_items, args.model)
        return 0

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
