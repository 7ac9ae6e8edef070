"""What a search shows while it runs: a bar over trials (a log line per trial off a terminal),
and where the running trial is. It also counts failures in a row: a search whose every trial
fails has a configuration problem, and stops."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from typing import Any

from tqdm import tqdm

from pipeline.study.report import short_params
from pipeline.study.spec import StudySpec

logger = logging.getLogger(__name__)

__all__ = ["MAX_CONSECUTIVE_FAILURES", "SearchProgress"]

MAX_CONSECUTIVE_FAILURES = 5  # stop a search whose every trial fails (a config problem)


class SearchProgress:
    """Optuna callback: a progress bar over trials (a log line per trial when not a tty)."""

    def __init__(self, *, n_trials: int | None, study: StudySpec) -> None:
        self.study = study
        self.numbers: list[int] = []  # the trials this run finished, in order
        self.failures_in_a_row = 0
        self.gave_up = False
        self._lock = threading.Lock()
        self.bar = tqdm(
            total=n_trials, unit="trial", desc=study.name, disable=not sys.stderr.isatty(),
            dynamic_ncols=True,
        )

    def __call__(self, optuna_study: Any, trial: Any) -> None:
        with self._lock:
            self.numbers.append(trial.number)
            state = trial.state.name
            self.failures_in_a_row = self.failures_in_a_row + 1 if state == "FAIL" else 0
            value = f"{trial.value:.4g}" if trial.value is not None else "-"
            logger.info(
                "trial %d %s %s=%s after %s epoch(s) in %.1f s (%s)",
                trial.number, state, self.study.metric, value,
                trial.user_attrs.get("epochs", "?"),
                trial.duration.total_seconds() if trial.duration else float("nan"),
                short_params(trial.params),
            )
            self.bar.update(1)
            with contextlib.suppress(ValueError):
                self.bar.set_postfix(best=f"{optuna_study.best_value:.4g}")
            if self.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES and not self.gave_up:
                self.gave_up = True
                optuna_study.stop()

    def epoch(self, number: int, epoch: int, value: float) -> None:
        """Inside a trial: its number, epoch and current value on the bar (a tty only)."""
        if self.bar.disable:
            return
        with self._lock:
            self.bar.set_postfix_str(
                f"trial {number} epoch {epoch} {self.study.metric} {value:.4g}", refresh=True
            )

    def close(self) -> None:
        self.bar.close()
