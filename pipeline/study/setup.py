"""What a search is asked to do (:class:`SearchOptions`) and what it runs on (:class:`Setup`).

:func:`load_setup` checks the options, reads ``params.yaml``, the study file and the cache, and
resolves the device and the study storage, before anything is written. The options cross to
``--workers`` processes as JSON (:meth:`SearchOptions.to_json`), never as re-rendered flags.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import PARAMS_FILE, PLAIN_NAME, PLAIN_NAME_RULE, Params, load_params
from pipeline.data.cache import Cache, load_cache
from pipeline.errors import UserError
from pipeline.study.spec import STUDIES_DIR, StudySpec, fit_to_data, load_study
from pipeline.study.storage import StorageChoice, resolve_storage

logger = logging.getLogger(__name__)

__all__ = ["DRY_RUN_EPOCHS", "SearchOptions", "Setup", "load_setup", "settings_digest",
           "trial_settings"]

DRY_RUN_EPOCHS = 2


@dataclass(frozen=True)
class SearchOptions:
    """What ``python -m pipeline.search`` was asked; None means "from the study file /
    params.yaml"."""

    study: str
    params_path: Path = Path(PARAMS_FILE)
    dataset: str | None = None
    n_trials: int | None = None  # trials to add; None: up to the study's total budget
    timeout_s: float | None = None  # --timeout; None: the study's budget.timeout_s
    storage: str | None = None
    n_jobs: int = 1  # trials in threads
    workers: int = 1  # worker processes on this machine
    device: str | None = None
    dry_run: bool = False
    reconcile: bool = False  # train nothing; make Optuna and MLflow agree, say what differed
    warm_start: str | None = None  # "STUDY[:DATASET]": queue that study's best configurations

    def to_json(self) -> str:
        """These options as one JSON object (how ``--workers`` hands them to its processes)."""
        return json.dumps({**dataclasses.asdict(self), "params_path": str(self.params_path)})

    @classmethod
    def from_json(cls, text: str) -> SearchOptions:
        data = json.loads(text)
        return cls(**{**data, "params_path": Path(data["params_path"])})

    def check(self) -> None:
        """Refuse values no search can run with (one line naming the flag)."""
        if self.n_trials is not None and self.n_trials < 0:
            raise UserError(f"--n-trials: expected an integer ≥ 0, got {self.n_trials}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise UserError(f"--timeout: expected seconds > 0, got {self.timeout_s:g}")
        if self.n_jobs < 1:
            raise UserError(f"--n-jobs: expected an integer ≥ 1, got {self.n_jobs}")
        if self.workers < 1:
            raise UserError(f"--workers: expected 1 or more worker processes, got "
                            f"{self.workers}")
        if self.workers > 1 and (self.dry_run or self.n_jobs != 1):
            raise UserError("--workers: runs whole processes; leave out --dry-run and --n-jobs")
        if self.reconcile and (self.n_trials or self.dry_run):
            raise UserError("--reconcile trains nothing: leave out --n-trials and --dry-run")
        if self.warm_start is not None:
            self.warm_start_from()

    def warm_start_from(self) -> tuple[str, str | None] | None:
        """``--warm-start STUDY[:DATASET]`` as ``(study, dataset or None)``."""
        if self.warm_start is None:
            return None
        study, _, dataset = self.warm_start.partition(":")
        for name in (study, dataset) if dataset else (study,):
            if not PLAIN_NAME.match(name):
                raise UserError(f"--warm-start: expected STUDY or STUDY:DATASET with plain "
                                f"names ({PLAIN_NAME_RULE}), got {self.warm_start!r}")
        return study, dataset or None


@dataclass(frozen=True)
class Setup:
    """What a search runs on, loaded and checked before anything is written."""

    options: SearchOptions
    params: Params  # the dataset's params
    study: StudySpec
    dataset: str
    default_dataset: str  # the study's own (its report is reports/studies/<study>.json)
    cache: Cache
    device: Any  # torch.device
    choice: StorageChoice

    @property
    def timeout_s(self) -> float | None:
        """This run's seconds: ``--timeout``, else the study file's (none for a dry run)."""
        if self.options.dry_run:
            return None
        given = self.options.timeout_s
        return given if given is not None else self.study.budget.timeout_s

    @property
    def extra_trials(self) -> int | None:
        """``--n-trials`` (1 for a dry run, 0 for --reconcile); None: up to the total."""
        if self.options.dry_run:
            return 1
        return 0 if self.options.reconcile else self.options.n_trials

    @property
    def study_total(self) -> int | None:
        return None if self.options.dry_run else self.study.budget.n_trials

    @functools.cached_property
    def settings(self) -> dict[str, str]:
        """What makes this search's trials comparable (:func:`trial_settings`)."""
        return trial_settings(self.study, self.params, self.cache.meta.fingerprint)


def load_setup(options: SearchOptions) -> Setup:
    """Check ``options`` and load what the search runs on.

    Raises:
        UserError: a bad option, params or study file, dataset, cache or storage setting.
    """
    from pipeline.training import arch_fits, runtime

    options.check()
    params = load_params(options.params_path)
    study = load_study(options.study, params.path(STUDIES_DIR), params)
    default_dataset = study.dataset or params.dataset
    dataset = options.dataset or default_dataset
    base = params.for_dataset(dataset)
    if options.dry_run:
        choice = StorageChoice(kind="memory", target="", origin="--dry-run")
    else:
        choice = resolve_storage(
            options.storage, params_value=base.search.storage, root=base.root,
            studies_dir=STUDIES_DIR, study_name=study.study_name(dataset),
            params_source=base.source,
        )
    cache = load_cache(base.cache_dir(dataset))
    return Setup(
        options=options, params=base, dataset=dataset,
        study=fit_to_data(study, lambda arch: arch_fits(arch, cache.meta)),
        default_dataset=default_dataset, cache=cache,
        device=runtime.resolve_device(options.device or base.device), choice=choice,
    )


def trial_settings(study: StudySpec, params: Params, fingerprint: str) -> dict[str, str]:
    """Everything that makes two trials' values comparable: data, base params, space, CV."""
    out = {"data.fingerprint": fingerprint}
    out.update({f"params.{k}": str(v) for k, v in params.flat().items()})
    skip = ("study.n_trials", "study.timeout_s", "study.sampler", "study.pruner")
    out.update({k: v for k, v in study.summary().items() if not k.startswith(skip)})
    return out


def settings_digest(settings: dict[str, str]) -> str:
    """A short digest of :func:`trial_settings`, stored on every trial (``pipeline.settings``)."""
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_settings(optuna_study: Any, settings: dict[str, str], *, where: str) -> None:
    """Warn when a continued study's earlier trials ran with other settings (not comparable)."""
    stored = optuna_study.user_attrs.get("settings")
    if stored is None:
        optuna_study.set_user_attr("settings", settings)
        return
    changed = [
        f"{k} ({stored.get(k, '-')} -> {settings.get(k, '-')})"
        for k in sorted(set(stored) | set(settings))
        if stored.get(k) != settings.get(k)
    ]
    if changed:
        logger.warning(
            "study %s in %s holds trials run with other settings: %s. New trials are not "
            "comparable with them; to start afresh use another --storage or delete the study",
            optuna_study.study_name, where, "; ".join(changed[:8])
            + (f"; and {len(changed) - 8} more" if len(changed) > 8 else ""),
        )
