"""A sampler whose random stream belongs to the trial, not to the process.

Optuna seeds a sampler once per process, so N workers given the study's seed draw the same
configurations, and a rerun replays its startup samples. Here each trial gets a fresh inner
sampler seeded from ``(study seed, trial number)``. Trial numbers are handed out by the storage
and are unique across workers, so no two trials share a stream. One uninterrupted worker stays
reproducible: trial ``n`` always draws from the same stream and sees the same history. The
samplers we build (TPE, random, grid) keep their state in the study, not in the instance, so a
fresh instance per trial loses nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from pipeline.training.runtime import derive_seed

__all__ = ["TrialSeededSampler"]

# Keeps the sampler's stream apart from the trial's training seed, derived from the same numbers.
_SAMPLER_STREAM = 1


class TrialSeededSampler(BaseSampler):
    """Delegates to ``factory(seed)``, built anew for every trial with a per-trial seed."""

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int) -> None:
        self._factory = factory
        self._seed = seed
        self._by_trial: dict[int, BaseSampler] = {}
        self._lock = threading.Lock()  # --n-jobs threads share one sampler

    def trial_seed(self, number: int) -> int:
        return derive_seed(self._seed, number, _SAMPLER_STREAM)

    def _inner(self, trial: FrozenTrial) -> BaseSampler:
        with self._lock:
            sampler = self._by_trial.get(trial.number)
            if sampler is None:
                sampler = self._factory(self.trial_seed(trial.number))
                self._by_trial[trial.number] = sampler
            return sampler

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._inner(trial).before_trial(study, trial)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._inner(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        sampler = self._inner(trial)
        try:
            sampler.after_trial(study, trial, state, values)
        finally:
            with self._lock:
                self._by_trial.pop(trial.number, None)

    def reseed_rng(self) -> None:
        """Nothing to reseed: every trial's stream is fixed by its number."""
