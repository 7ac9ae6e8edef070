"""The study budget rule: a total for the study, --n-trials adds, failures do not count."""

from __future__ import annotations

import optuna
import pytest

from pipeline.study.budget import counted, plan, stop_at_total

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_what_counts() -> None:
    states = ["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING", "FAIL"]
    assert counted(states) == 3  # a queued retry counts once it runs


@pytest.mark.parametrize(
    ("extra", "total", "done", "n_trials", "stop_total"),
    [
        (None, 20, 0, 20, 20),  # a fresh study gets its total
        (None, 20, 14, 6, 20),  # a rerun tops up to the total
        (None, 20, 25, 0, 20),  # over the total (workers overshot, or the file shrank): none
        (5, 20, 20, 5, None),  # --n-trials adds, whatever the total
        (0, 20, 3, 0, None),  # --n-trials 0: nothing
        (None, None, 7, None, None),  # no total: until the timeout or Ctrl-C
    ],
)
def test_plan(extra: int | None, total: int | None, done: int, n_trials: int | None,
              stop_total: int | None) -> None:
    budget = plan(extra=extra, total=total, done=done)
    assert (budget.n_trials, budget.total) == (n_trials, stop_total)
    assert budget.describe(done)


def test_workers_stop_at_the_study_total() -> None:
    """Two workers on one study with a total of 5: the second stops when the total is met."""
    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(study_name="s", storage=storage)
    first.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    second = optuna.load_study(study_name="s", storage=storage)
    second.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=10,
                    callbacks=[stop_at_total(5)])
    assert len(second.trials) == 5


def test_a_queued_retry_of_a_dead_workers_trial_still_runs() -> None:
    states = ["COMPLETE"] * 19 + ["FAIL", "WAITING"]  # trial 19 died and was queued again
    assert plan(extra=None, total=20, done=counted(states)).n_trials == 1
