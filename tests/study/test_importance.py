"""Importances and Optuna's plots at the end of a search load no scikit-learn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_CHECK = """
import sys
import optuna
from pipeline.study import parent, report_page  # what a search's end imports
import optuna.visualization.matplotlib  # Optuna's plots on the parent run
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2 + t.suggest_int("y", 1, 5), n_trials=12)
found = report_page._importances(study, study.trials)
assert set(found) == {"x", "y"} and found["y"] > found["x"], found
assert "sklearn" not in sys.modules, "scikit-learn was imported"
import sklearn.ensemble  # turned away only while optuna.importance loaded
print("ok")
"""


def test_a_search_end_computes_importances_without_scikit_learn() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _CHECK], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
