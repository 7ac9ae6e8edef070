"""Names of the Optuna trial user attributes that say how a trial came to be and how far it
went; the study's modules, the report and the tests read them from here."""

from __future__ import annotations

__all__ = ["ADJUSTED_ATTR", "AUDIT_ATTR", "BASELINE_ATTR", "EPOCH_SECONDS_ATTR",
           "FOLDS_NOW_ATTR", "FOLD_CURVES_ATTR", "RUNG_ATTR", "STOPPED_FLAT_ATTR", "WARM_ATTR"]

BASELINE_ATTR = "pipeline.baseline"  # the params.yaml configuration (a new study's first trial)
WARM_ATTR = "pipeline.warm_start"  # queued from another study's trial ("<study>#<number>")
ADJUSTED_ATTR = "pipeline.adjusted"  # values moved into the space ("key: a -> b; ...")
RUNG_ATTR = "rung"  # the highest rung of a successive-halving schedule the trial reached
AUDIT_ATTR = "pipeline.audit"  # the pruner would have stopped it here; let finish to measure
EPOCH_SECONDS_ATTR = "epoch_seconds"  # each epoch's seconds (the compute pruning saves)
FOLDS_NOW_ATTR = "pipeline.folds_now"  # this epoch's value per fold (fold-aware pruning)
FOLD_CURVES_ATTR = "fold_curves"  # every epoch's value per fold, when the trial ended
# Study user attribute: the search stopped because further trials were unlikely to beat the
# best by more than its noise (budget.patience): after how many flat trials, and the best.
STOPPED_FLAT_ATTR = "pipeline.stopped_flat"
