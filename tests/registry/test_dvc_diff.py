"""`dvc metrics diff` and `dvc plots diff` across two commits of the evaluation's files.

The files are the ones `pipeline.evaluate` writes (numbers-only `metrics.json`, the confusion
CSV), declared as in the project's `dvc.yaml` and committed to git (cache: false), so DVC can
read each commit's version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.registry.evaluation import metrics_json, pairs_csv

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path) -> str:
    who = {"GIT_AUTHOR_NAME": "t", "GIT_COMMITTER_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", **who}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


def _evaluation(root: Path, accuracy: float, predicted: list[str]) -> None:
    reports = root / "reports"
    (reports / "plots").mkdir(parents=True, exist_ok=True)
    (reports / "metrics.json").write_bytes(
        metrics_json({"accuracy": accuracy, "loss": 1 - accuracy, "n_test": 4, "model_version": 1})
    )
    (reports / "plots" / "confusion.csv").write_bytes(pairs_csv(["a", "b", "a", "b"], predicted))
    (reports / "plots" / "curves.csv").write_text(  # as evaluation.training_curves writes it
        "epoch,accuracy/train,accuracy/val,loss/train,loss/val\n"
        f"1,0.5,0.4,1.2,1.3\n2,{accuracy},{accuracy - 0.1},0.6,0.7\n")


def test_metrics_and_plots_diff_across_commits(tmp_path: Path) -> None:
    project = yaml.safe_load((REPO / "dvc.yaml").read_text())
    evaluate = project["stages"]["evaluate"]
    stage = {"cmd": "true", "metrics": evaluate["metrics"], "outs": evaluate["outs"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"evaluate": stage}, "plots": project["plots"]}, sort_keys=False))
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], tmp_path)
    _run([*dvc, "init", "-q"], tmp_path)
    _evaluation(tmp_path, 0.5, ["a", "a", "a", "b"])
    (tmp_path / "reports" / "evaluation.json").write_text("{}")
    _run(["git", "add", "-A"], tmp_path)
    _run(["git", "commit", "-qm", "first"], tmp_path)
    _evaluation(tmp_path, 0.75, ["a", "b", "a", "a"])
    _run(["git", "commit", "-qam", "second"], tmp_path)

    diff = json.loads(_run([*dvc, "metrics", "diff", "HEAD~1", "--json"], tmp_path))
    change = diff["reports/metrics.json"]["accuracy"]
    assert change["old"] == 0.5 and change["new"] == 0.75
    plots = json.loads(_run([*dvc, "plots", "diff", "HEAD~1", "--json"], tmp_path))
    text = json.dumps(plots)
    assert "confusion.csv" in text and "HEAD~1" in text and "workspace" in text, text[:2000]
    loss = plots["data"]["champion loss"]  # the champion's train and validation curves
    points = [v for p in loss for v in p["content"]["data"]["values"]]
    assert {v["rev"] for v in points} == {"HEAD~1", "workspace"}, json.dumps(loss)[:2000]
    assert {v["field"] for v in points} == {"loss/train", "loss/val"}
