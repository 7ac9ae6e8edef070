"""``python -m pipeline.report --study S``: the study as one self-contained HTML page.

Writes ``reports/studies/<study>-page/index.html`` and its PNGs (leaderboard with the fold
spread, the best trials' curves, train vs validation loss, pruning, parameter importance),
reading the Optuna study from its storage and the curves from MLflow. Open the file in any
browser; it loads nothing from the network.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pipeline import cli
from pipeline.config import PARAMS_FILE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.report",
        description="Write a study's report page (HTML + PNGs, renders offline).",
    )
    parser.add_argument("--study", required=True, help="study name (studies/<name>.yaml)")
    parser.add_argument("--params", default=PARAMS_FILE, type=Path,
                        help="params file; its folder is the project root (default: %(default)s)")
    parser.add_argument("--dataset", help="dataset (default: the study's, else params.yaml's)")
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna storage (default: as pipeline.search resolves it)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="folder for index.html and the PNGs "
                             "(default: reports/studies/<study>-page)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> int:
        # Imported after parsing: --help answers without loading optuna, mlflow and matplotlib.
        from pipeline.study.report_page import ReportOptions, run_report

        result = run_report(ReportOptions(study=args.study, params_path=args.params,
                                          dataset=args.dataset, storage=args.storage,
                                          out=args.out))
        print(f"{result.index} ({result.n_trials} trials)")
        return 0

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
