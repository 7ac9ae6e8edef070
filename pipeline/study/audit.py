"""How far pruning can be trusted: a measured false-prune rate and the compute pruning saved.

A pruner's decision is never checked: a stopped trial might have become the best. The audit
(``search.prune_audit``, a share such as 0.1) lets that share of the trials the pruner would
stop finish anyway, drawn per trial from a stream seeded by the study seed and the trial
number (reproducible, the same on every worker), and records where the pruner would have
stopped it and what the best value was at that moment (:data:`AUDIT_ATTR`). From the audited
trials that finished, :func:`pruning_summary` estimates

- the **false-prune rate**: the share of them that ended better than the best value at the
  moment the pruner would have stopped them (a pruned trial that would have beaten the best
  at the time), with the count it rests on;
- the **compute saved**: what the pruned trials did not spend, taken as the seconds the
  audited trials spent after the point where they would have been stopped, per pruned trial,
  against all the seconds the study's trials spent.

Both go in the study report, on the parent run and in the search's summary. ``0`` switches the
audit off (the pruner's every decision stands).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import Any

from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import TrialState

from pipeline.study.trial_attrs import AUDIT_ATTR, BASELINE_ATTR, EPOCH_SECONDS_ATTR

__all__ = ["AuditedPruner", "describe", "pruning_summary"]



class AuditedPruner(BasePruner):
    """``inner``'s decisions, except that ``share`` of the trials it would stop go on (their
    first would-be stop recorded in :data:`AUDIT_ATTR`); the baseline is never audited."""

    def __init__(self, inner: BasePruner, *, share: float, seed: int) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share=}.")
        self.inner, self.share, self.seed = inner, share, seed

    def prune(self, study: Any, trial: Any) -> bool:
        if not self.inner.prune(study, trial):
            return False
        if self.share <= 0.0 or trial.user_attrs.get(BASELINE_ATTR):
            return True
        # A string seed is hashed with SHA-512: the same draw in every process, at every
        # step: an audited trial runs to its end.
        if random.Random(f"audit:{self.seed}:{trial.number}").random() >= self.share:
            return True
        # The trial handed to a pruner may be a cached copy: the storage's says whether the
        # first would-be stop is recorded already.
        if study._storage.get_trial(trial._trial_id).user_attrs.get(AUDIT_ATTR) is None:
            step = trial.last_step
            study._storage.set_trial_user_attr(trial._trial_id, AUDIT_ATTR, {
                "step": step, "value": trial.intermediate_values[step],
                "best": _best_value(study)})
        return False


def _best_value(study: Any) -> float | None:
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.value is not None and math.isfinite(t.value)]
    if not values:
        return None
    return max(values) if study.direction == StudyDirection.MAXIMIZE else min(values)


def pruning_summary(trials: Sequence[Any], direction: str) -> dict[str, Any]:
    """What pruning did in these trials and what the audit says it cost (see the module
    docstring); plain values for the report."""
    sign = -1.0 if direction == "maximize" else 1.0
    pruned = [t for t in trials if t.state == TrialState.PRUNED
              and "pipeline.duplicate_of" not in t.user_attrs]
    audited = [t for t in trials if t.user_attrs.get(AUDIT_ATTR) is not None
               and t.state == TrialState.COMPLETE and t.value is not None]
    judged = [t for t in audited if t.user_attrs[AUDIT_ATTR].get("best") is not None]
    false = [t for t in judged
             if sign * t.value < sign * float(t.user_attrs[AUDIT_ATTR]["best"])]
    spent = sum(float(t.user_attrs.get("train_s", 0.0)) for t in trials)
    after = [_seconds_after(t, int(t.user_attrs[AUDIT_ATTR]["step"])) for t in audited]
    out: dict[str, Any] = {
        "pruned": len(pruned),
        "audited": len(audited),
        "false_prunes": len(false),
        "false_prune_rate": len(false) / len(judged) if judged else None,
        "judged": len(judged),
        "seconds_spent": round(spent, 1),
        "epochs_pruned_trials_ran": sum(int(t.user_attrs.get("epochs", 0)) for t in pruned),
    }
    if after:
        saved = len(pruned) * statistics.fmean(after)
        out["seconds_saved_estimate"] = round(saved, 1)
        out["saved_share_estimate"] = saved / (spent + saved) if spent + saved > 0 else None
    return out


def _seconds_after(trial: Any, step: int) -> float:
    """The seconds a trial spent after epoch ``step`` (from its per-epoch seconds)."""
    seconds = trial.user_attrs.get(EPOCH_SECONDS_ATTR) or []
    return float(sum(seconds[step:]))


def describe(summary: dict[str, Any]) -> str | None:
    """The summary line: pruned trials, compute saved, the audit's estimate; None: no pruning."""
    if not summary.get("pruned") and not summary.get("audited"):
        return None
    parts = [f"{summary['pruned']} trial(s) pruned"]
    share = summary.get("saved_share_estimate")
    if share is not None:
        parts.append(f"about {share:.0%} of the training time saved")
    rate = summary.get("false_prune_rate")
    if summary.get("audited"):
        told = (f"{summary['false_prunes']} of {summary['judged']} would have beaten the best "
                f"of their time (false-prune rate {rate:.0%})" if rate is not None
                else "none had a best to beat yet")
        parts.append(f"audit: {summary['audited']} let finish, {told}")
    else:
        parts.append("audit: none let finish yet (search.prune_audit)")
    return "; ".join(parts)
