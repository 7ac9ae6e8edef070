"""Per-trial sampler streams: workers never draw alike; one worker is reproducible."""

from __future__ import annotations

import optuna
import pytest

from pipeline.study._sampling import TrialSeededSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_int("width", 16, 1024, log=True)
    y = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    return (x - 200) ** 2 / 1e4 + (y - 0.01) ** 2


def _tpe(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)


def _worker(storage: optuna.storages.BaseStorage, seed: int = 42) -> optuna.Study:
    return optuna.create_study(
        study_name="s", storage=storage, load_if_exists=True,
        sampler=TrialSeededSampler(_tpe, seed),
    )


def test_workers_with_the_same_seed_draw_different_configurations() -> None:
    storage = optuna.storages.InMemoryStorage()
    workers = [_worker(storage) for _ in range(3)]
    # Interleaved as three processes would be: each asks before any tells.
    for _ in range(4):
        trials = [w.ask() for w in workers]
        for w, t in zip(workers, trials, strict=True):
            w.tell(t, _objective(t))
    params = [tuple(sorted(t.params.items())) for t in workers[0].trials]
    assert len(params) == 12
    assert len(set(params)) == len(params)


def test_plain_optuna_samplers_repeat_each_other() -> None:
    """The failure this module exists for: same seed, same draws in every worker."""
    storage = optuna.storages.InMemoryStorage()
    workers = [optuna.create_study(study_name="s", storage=storage, load_if_exists=True,
                                   sampler=_tpe(42)) for _ in range(2)]
    a, b = workers[0].ask(), workers[1].ask()
    assert _objective(a) == _objective(b)


def test_one_uninterrupted_worker_is_reproducible() -> None:
    def run() -> list[dict]:
        study = _worker(optuna.storages.InMemoryStorage())
        study.optimize(_objective, n_trials=8)
        return [t.params for t in study.trials]

    assert run() == run()


def test_a_rerun_does_not_replay_the_startup_samples() -> None:
    storage = optuna.storages.InMemoryStorage()
    _worker(storage).optimize(_objective, n_trials=3)
    _worker(storage).optimize(_objective, n_trials=3)  # the "rerun" after an interruption
    params = [tuple(sorted(t.params.items())) for t in _worker(storage).trials]
    assert len(set(params)) == 6


@pytest.mark.parametrize("n_jobs", [2])
def test_threads_share_one_sampler_safely(n_jobs: int) -> None:
    study = _worker(optuna.storages.InMemoryStorage())
    study.optimize(_objective, n_trials=10, n_jobs=n_jobs)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 10
    assert not study.sampler._by_trial  # every trial's inner sampler released
