"""Stage ``promote``: the study's best trial becomes a registered model version; the gate
decides whether it takes the ``champion`` alias.

Reads ``reports/studies/<study>.json`` (written by ``pipeline.search``; ``best.model_uri`` is the
best completed trial's model), the dataset's cache (``data/cache/<dataset>/``, held-out test
split) and the MLflow registry. Writes a new version of ``registry.model_name`` (once per run:
rerunning with the same best trial registers nothing new), its tags, the ``champion`` or
``challenger`` alias, and the decision record ``reports/promote/<study>.json``.

    python -m pipeline.promote --study capacity [--params params.yaml] [--force] [--report PATH]

``--allow-interrupted`` also considers trials that Ctrl-C stopped (default: finished trials
only). ``--select smallest_within_1se`` (or ``registry.select``) registers the smallest model
within one standard error of the best instead of the best; the version's tags say why.
``--force`` moves ``champion`` to the candidate even when it does not beat the current
champion (a human decision, recorded in the version's ``forced`` / ``forced_by`` tags).
See :mod:`pipeline.registry.gate` for the gate's rules.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline import cli
from pipeline.config import PARAMS_FILE, load_params
from pipeline.registry.promotion import PromoteOptions, run_promote, summary

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.promote",
        description="Register a study's best trial and move the 'champion' alias to it if it "
        "beats the current champion on the held-out test split.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--study", required=True, help="study name (reports/studies/NAME.json)")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (project root)")
    parser.add_argument(
        "--dataset", default=None,
        help="for a search run with --dataset on another dataset than the study's own "
        "(reads reports/studies/STUDY-DATASET.json)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="make the candidate champion even if it does not beat the current one (recorded "
        "in the version's tags)",
    )
    parser.add_argument(
        "--allow-interrupted", action="store_true",
        help="also consider trials stopped by Ctrl-C (they keep the model of their best epoch); "
        "by default only finished trials are candidates",
    )
    parser.add_argument(
        "--select", choices=("best", "smallest_within_1se"), default=None,
        help="which trial to register: the best, or the smallest model (parameters) within one "
        "standard error of the best (default: registry.select in params.yaml)",
    )
    parser.add_argument(
        "--report", type=Path, default=None,
        help="where to write the decision record (default: reports/promote/ + the study "
        "report's file name)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> int:
        params = load_params(args.params)
        result = run_promote(PromoteOptions(
            params=params, study=args.study, dataset=args.dataset, force=args.force,
            report=args.report, allow_interrupted=args.allow_interrupted, select=args.select,
        ))
        print(summary(result.record))
        return 0

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
