"""Stage ``evaluate``: the champion's metrics and plots on the held-out test split.

Reads ``models:/<registry.model_name>@champion`` (or ``--model URI``) from the MLflow registry
and the dataset's cache (``data/cache/<dataset>/``, test split). Writes, as one set (all of
them or, if killed, none; the next run removes what a killed one left):

- ``reports/metrics.json``: flat JSON for ``dvc metrics show`` — classification: ``accuracy``,
  ``loss`` (cross-entropy), ``per_class_accuracy/<class>``; regression: ``mae``, ``rmse``,
  ``r2``; both: ``n_test`` and ``model_version`` (numbers only, for ``dvc metrics diff``);
- ``reports/evaluation.json``: ``dataset``, ``model`` (the exact version evaluated, e.g.
  ``models:/pipeline-digits/3``, or the URI given with ``--model``) and ``fingerprint``;
- ``reports/plots/confusion.csv`` (``actual,predicted`` class names, one row per test item; DVC's
  ``confusion`` template) and ``confusion.png`` (the matrix as a heatmap), or for regression
  ``reports/plots/predictions.csv`` (``actual,predicted``; ``scatter`` template) and
  ``predictions.png`` (predicted vs true).

    python -m pipeline.evaluate [--params params.yaml] [--dataset D] [--model URI]
    python -m pipeline.evaluate --summary   # where the champion is; what `make run` ends with
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from pipeline import cli
from pipeline.config import PARAMS_FILE, load_params
from pipeline.registry.evaluation import EvaluateOptions, champion_summary, run_evaluate, summary

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.evaluate",
        description="Test metrics and plots of the champion (or --model) for dvc metrics/plots.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (project root)")
    parser.add_argument("--dataset", default=None, help="dataset (default: params 'dataset')")
    parser.add_argument(
        "--model", default=None,
        help="model URI (default: models:/<registry.model_name>@champion)",
    )
    parser.add_argument(
        "--summary", action="store_true",
        help="evaluate nothing: print where the champion is, its test metrics from "
        "reports/metrics.json, and how to serve it and open the MLflow UI",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> int:
        params = load_params(args.params)
        if args.summary:
            print(champion_summary(params, args.dataset))
            return 0
        result = run_evaluate(EvaluateOptions(params, dataset=args.dataset, model_uri=args.model))
        print(summary(result, args.dataset or params.dataset))
        return 0

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
