"""``python -m pipeline.promote``: the champion gate end to end against a real SQLite registry.

One project per module (training and the MLflow store are the expensive part): a synthetic
digits cache, a weak and a strong model trained with the engine and logged with
``tracking.log_model``, and study reports written by hand. The steps run in order.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline import promote
from pipeline.config import Params, load_params
from pipeline.data.cache import load_cache
from pipeline.registry import gate as registry
from tests.conftest import REPO, SMALL, _deep_update, make_image_cache
from tests.registry.test_gate import error_line, setup_store, train_and_log, write_study_report


@dataclass
class World:
    root: Path
    params: Params
    weak: str  # run id of a barely trained model
    strong: str  # run id of a well trained one
    name: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("promote")
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        _deep_update(raw, SMALL)
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        params = load_params(root / "params.yaml")
        make_image_cache(params.cache_dir("digits"), name="digits")
        cache = load_cache(params.cache_dir("digits"))
        exp = setup_store(params)
        weak, _ = train_and_log(params, cache, experiment_id=exp, lr=1e-5, epochs=1)
        strong, _ = train_and_log(params, cache, experiment_id=exp, lr=1e-2, epochs=8)
        yield World(root, params, weak, strong, "pipeline-digits")


def _promote(w: World, study: str, run_id: str, *extra: str,
             capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    write_study_report(w.params, study, dataset="digits", run_id=run_id, number=7)
    code = promote.main(["--study", study, "--params", str(w.root / "params.yaml"), *extra])
    out = capsys.readouterr()
    record_path = w.root / "reports" / "promote" / f"{study}.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    return code, record, out.out + out.err


def _state(w: World) -> tuple[int, str | None, str | None]:
    from mlflow import MlflowClient

    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{w.name}'")
    champ = registry.get_alias(client, w.name, registry.CHAMPION)
    chall = registry.get_alias(client, w.name, registry.CHALLENGER)
    return (len(versions), champ and champ.run_id, chall and chall.run_id)


def test_gate_sequence(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    w = world
    # 1. First candidate: no champion yet, so even the weak model takes it.
    code, rec, out = _promote(w, "first", w.weak, capsys=capsys)
    assert code == 0, out
    assert rec["decision"]["alias"] == "champion"
    assert "no champion yet" in rec["decision"]["reason"]
    assert rec["candidate"]["new_version"] and rec["candidate"]["trial"] == 7
    assert _state(w) == (1, w.weak, None)
    # The logged model knows its version (the UI's logged-model page shows it instead of
    # "Not registered"), and the version its run.
    first = MlflowClient().get_model_version(w.name, "1")
    assert first.run_id == w.weak and first.source.startswith("models:/m-")
    logged = MlflowClient().get_logged_model(first.source.removeprefix("models:/"))
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": w.name, "version": "1"}]
    weak_acc = rec["candidate"]["test_metrics"]["accuracy"]

    # 2. A better candidate takes champion; the old champion was re-evaluated.
    code, rec, out = _promote(w, "better", w.strong, capsys=capsys)
    assert code == 0, out
    strong_acc = rec["candidate"]["test_metrics"]["accuracy"]
    assert strong_acc > weak_acc
    assert rec["decision"] == {
        "alias": "champion", "moved": True, "forced": False, "reason": rec["decision"]["reason"]
    }
    assert rec["previous_champion"]["metrics"]["accuracy"] == pytest.approx(weak_acc)
    assert rec["champion"]["version"] == rec["candidate"]["version"] == "2"
    assert _state(w) == (2, w.strong, None)
    assert "champion is v2" in out

    # 3. A worse candidate (the weak run, from another study) never takes champion.
    code, rec, out = _promote(w, "worse", w.weak, capsys=capsys)
    assert code == 0, out
    assert rec["decision"]["alias"] == "challenger" and not rec["decision"]["moved"]
    assert "does not beat" in rec["decision"]["reason"]
    assert not rec["candidate"]["new_version"]  # the run was registered in step 1
    assert _state(w) == (2, w.strong, w.weak)

    # 4. Rerunning with the same best trial is idempotent: no new version, no change.
    before = (w.root / "reports" / "promote" / "better.json").read_text()
    code, rec, out = _promote(w, "better", w.strong, capsys=capsys)
    assert code == 0, out
    assert "already the champion" in rec["decision"]["reason"] and not rec["decision"]["moved"]
    second = MlflowClient().get_model_version(w.name, "2")
    links = MlflowClient().get_logged_model(second.source.removeprefix("models:/")).tags
    assert json.loads(links["mlflow.modelVersions"]) == [{"name": w.name, "version": "2"}]
    assert _state(w) == (2, w.strong, w.weak)
    rec_before = json.loads(before)
    for key in ("champion", "candidate", "decision"):
        if key == "candidate":
            rec_before[key].pop("new_version")
            rec[key].pop("new_version")
        if key != "decision":
            assert rec[key] == rec_before[key]

    # 5. --force moves champion to the worse model and says so in its tags.
    code, rec, out = _promote(w, "worse", w.weak, "--force", capsys=capsys)
    assert code == 0, out
    assert rec["decision"]["forced"] and rec["decision"]["moved"]
    assert "--force" in rec["decision"]["reason"]
    assert _state(w) == (2, w.weak, None)  # the challenger alias left the new champion
    version = MlflowClient().get_model_version(w.name, "1")
    assert version.tags["forced"] == "true" and version.tags["forced_by"]
    assert version.tags["run_id"] == w.weak and version.tags["study"] == "worse"
    assert version.tags["trial"] == "7" and version.tags["fingerprint"] == "synthetic-images-0"
    assert float(version.tags["test/accuracy"]) == pytest.approx(weak_acc, rel=1e-5)
    assert version.tags["decision"] == "champion"
    old = MlflowClient().get_model_version(w.name, "2").tags
    assert old["decision"] == "superseded" and old["superseded_by"] == "1"
    assert old["superseded_at"].startswith("20") and old["superseded_at"].endswith("+00:00")

    # 6. The gate still works after a forced decision: the strong model wins it back.
    code, rec, out = _promote(w, "better", w.strong, capsys=capsys)
    assert code == 0, out
    assert rec["decision"]["moved"] and not rec["decision"]["forced"]
    assert _state(w) == (2, w.strong, None)
    assert MlflowClient().get_model_version(w.name, "2").tags["forced"] == "false"
    assert MlflowClient().get_model_version(w.name, "2").tags["decision"] == "champion"
    assert MlflowClient().get_model_version(w.name, "1").tags["superseded_by"] == "2"


def test_stale_cache_and_champion_from_other_data(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    w = world
    # The best trial's model saw other data than the cache now holds: refuse.
    other = w.params.with_overrides({"prepare.cache_dir": "data/cache_other"})
    src, dst = w.params.cache_dir("digits"), other.cache_dir("digits")
    shutil.copytree(src, dst)
    meta = json.loads((dst / "meta.json").read_text())
    meta["fingerprint"] = "rebuilt-data"
    (dst / "meta.json").write_text(json.dumps(meta))
    write_study_report(other, "stale", dataset="digits", run_id=w.strong)
    from pipeline.errors import UserError
    from pipeline.registry.promotion import PromoteOptions, run_promote

    with pytest.raises(UserError, match="rerun the search"):
        run_promote(PromoteOptions(other, study="stale", report=w.root / "stale.json"))

    # A champion trained on other data cannot be compared: the candidate replaces it.
    decision = registry.decide(
        metric="accuracy", candidate={"accuracy": 0.1}, champion_version="2", champion=None,
        same_data=False, force=False,
    )
    assert decision.take_champion and "other data" in decision.reason


def test_user_errors_are_one_line(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = world
    args = ["--params", str(w.root / "params.yaml")]
    assert promote.main(["--study", "missing", *args]) == 2
    err = error_line(capsys)
    assert "run the search first" in err

    write_study_report(w.params, "empty", dataset="digits", run_id=None)
    assert promote.main(["--study", "empty", *args]) == 2
    assert "no completed trial" in error_line(capsys)


def test_interrupted_trials_are_candidates_only_when_allowed(tmp_path) -> None:
    from pipeline.errors import UserError
    from pipeline.registry.promotion import candidate_from_report
    from pipeline.study.report import StudyReport

    kept = {"number": 3, "value": 0.4, "params": {}, "run_id": "abc",
            "model_uri": "runs:/abc/model", "interrupted": True}
    report = StudyReport(
        study="s", description="", optuna_study="s-digits", dataset="digits", fingerprint="",
        direction="minimize", metric="val/loss", storage="", best=None, counts={},
        best_with_interrupted=kept,
    )
    path = tmp_path / "s.json"
    with pytest.raises(UserError, match=r"no completed trial.*--dataset digits"):
        candidate_from_report(report, "s", path)
    candidate = candidate_from_report(report, "s", path, allow_interrupted=True)
    assert candidate.run_id == "abc" and candidate.trial == 3


def test_select_smallest_within_one_standard_error_registers_it_and_says_why(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report names both the best trial (strong, big) and the smallest model within one
    standard error of it (weak run standing in for a small model): --select takes the second
    and the version's tags carry the numbers; without --select, registry.select (best)."""
    from mlflow import MlflowClient

    from pipeline.study.report import StudyReport, report_path

    w = world
    rule = {"best_trial": 4, "best_value": 0.29, "best_value_std": 0.04, "best_n_params": 102400,
            "folds": 4, "standard_error": 0.02, "threshold": 0.31, "n_params": 3200}
    entry = {"number": 9, "value": 0.305, "params": {}, "run_id": w.weak,
             "model_uri": f"runs:/{w.weak}/model", "n_params": 3200, "rule": rule}
    best = {"number": 4, "value": 0.29, "params": {}, "run_id": w.strong,
            "model_uri": f"runs:/{w.strong}/model"}
    StudyReport(study="cap", description="", optuna_study="cap-digits", dataset="digits",
                fingerprint="", direction="minimize", metric="val/loss", storage="", best=best,
                counts={}, smallest_within_1se=entry,
                ).write(report_path(w.params, "cap", "digits", "digits"))
    args = ["--study", "cap", "--params", str(w.root / "params.yaml")]
    assert promote.main([*args, "--select", "smallest_within_1se"]) == 0
    out = capsys.readouterr().out
    assert "smallest within one standard error of the best trial #9" in out
    record = json.loads((w.root / "reports" / "promote" / "cap.json").read_text())
    assert record["candidate"]["run_id"] == w.weak and record["candidate"]["trial"] == 9
    version = MlflowClient().get_model_version(w.name, record["candidate"]["version"])
    tags = version.tags
    assert tags["selected_by"] == "smallest_within_1se" and tags["trial"] == "9"
    assert tags["selection.threshold"] == "0.31" and tags["selection.n_params"] == "3200"
    assert tags["selection.best_trial"] == "4" and tags["selection.best_n_params"] == "102400"
    assert tags["selection_reason"] == (
        "trial 9 (3,200 parameters, val/loss 0.305) is the smallest model within one standard "
        "error of the best, trial 4 (val/loss 0.29 ± 0.04 over 4 folds, standard error 0.02, "
        "102,400 parameters): threshold 0.31")
    # The champion gate is unchanged: the weak model does not beat the strong champion.
    assert record["decision"]["alias"] == "challenger"

    # registry.select (best by default) decides without the flag.
    assert promote.main(args) == 0
    record = json.loads((w.root / "reports" / "promote" / "cap.json").read_text())
    assert record["candidate"]["run_id"] == w.strong
    assert record["candidate"]["selection"] == {"selected_by": "best"}
    capsys.readouterr()
    assert promote.main([*args, "--select", "smallest_within_1se", "--allow-interrupted"]) == 2
    assert "leave it out with --select smallest_within_1se" in error_line(capsys)
