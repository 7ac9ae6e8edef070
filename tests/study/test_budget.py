"""The study budget rule: a total for the study, --n-trials adds, failures do not count."""

from __future__ import annotations

import functools
from pathlib import Path

import optuna
import pytest

from pipeline.study.budget import BudgetReached, admitting, counted, run_budget, stop_at_total
from pipeline.study.storage import StorageChoice, open_storage, study_lock
from tests.conftest import race_for_trials

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
    budget = run_budget(extra=extra, total=total, done=done, timeout_s=None,
                        trial_time_share=1.0)
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
    assert run_budget(extra=None, total=20, done=counted(states), timeout_s=None,
                      trial_time_share=1.0).n_trials == 1


def _journal_study(tmp_path: Path) -> tuple[optuna.Study, StorageChoice]:
    choice = StorageChoice("journal", str(tmp_path / "s.journal"), "test")
    return optuna.create_study(study_name="s", storage=open_storage(choice)), choice


def test_workers_starting_at_once_create_exactly_the_total(tmp_path: Path) -> None:
    """Twelve threads, each its own storage object on one journal, ask at the same moment."""
    _, choice = _journal_study(tmp_path)
    studies = [optuna.load_study(study_name="s", storage=open_storage(choice)) for _ in range(12)]
    assert race_for_trials(studies, choice, 5) == ["created"] * 5 + ["refused"] * 7
    assert len(optuna.load_study(study_name="s", storage=open_storage(choice)).trials) == 5


def test_a_full_study_still_runs_its_queued_retry(tmp_path: Path) -> None:
    study, choice = _journal_study(tmp_path)
    lock = functools.partial(study_lock, choice, study._storage, "s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    study.enqueue_trial({"x": 0.5})  # a dead worker's trial, queued again: it counts
    with admitting(study, 3, lock):
        with pytest.raises(BudgetReached):  # two done + one queued: no room for a new one
            study._storage.create_new_trial(study._study_id)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)  # pops the retry
        with pytest.raises(BudgetReached):
            study.ask()
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert study.trials[2].params == {"x": 0.5}
    study.ask()  # outside the block Optuna is as it was
