"""The study page: built from a real (in-memory) Optuna study, rendered without a browser."""

from __future__ import annotations

import optuna
import pytest

from pipeline.study.report_page import collect, render, write_page

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study() -> optuna.Study:
    study = optuna.create_study(direction="minimize")
    for i in range(4):
        trial = study.ask({"model.width": optuna.distributions.IntDistribution(16, 512),
                           "model.batch_norm": optuna.distributions.CategoricalDistribution(
                               [False, True])})
        assert trial.params["model.width"]  # sampled
        for epoch in range(1, 4 if i != 3 else 2):
            trial.report(1.0 / (epoch + i), epoch)
        trial.set_user_attr("value_std", 0.01 * (i + 1))
        trial.set_user_attr("epochs", 3)
        trial.set_user_attr("mlflow_run_id", f"run{i}")
        if i == 3:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, 0.5 - 0.1 * i)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    return study


def _histories(run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {"train/loss": [(1, 0.9), (2, 0.5), (3, 0.3)],
            "val/loss": [(1, 1.0), (2, 0.7), (3, 0.6)]}


def test_page_shows_leaderboard_with_spread_curves_pruning_and_importance(tmp_path) -> None:
    view = collect(_study(), title="capacity-digits", description="How wide?",
                   metric="val/loss", histories=_histories)
    assert [t.state for t in view.trials] == ["COMPLETE"] * 3 + ["PRUNED", "FAIL"]
    assert view.importance_trials == 3
    page = render(view)
    assert set(page.pngs) == {"leaderboard.png", "curves.png", "train_vs_val.png",
                              "pruning.png", "importance.png"}
    assert all(png.startswith(b"\x89PNG") for png in page.pngs.values())
    text = page.html
    assert "0.3000 ± 0.0300" in text  # the best trial, with its fold spread
    assert "3 complete, 1 pruned, 1 failed" in text
    assert 'id="importance"' in text
    assert "batch_norm" in text  # the per-choice table
    assert "http://" not in text and "https://" not in text  # renders offline: nothing fetched
    index = write_page(page, tmp_path / "page")
    assert index.read_text() == text
    assert (tmp_path / "page" / "pruning.png").read_bytes() == page.pngs["pruning.png"]


def test_an_empty_study_renders_with_explanations() -> None:
    view = collect(optuna.create_study(), title="t", description="", metric="val/loss")
    page = render(view)
    assert page.pngs == {}
    assert "not enough trials" in page.html


@pytest.mark.parametrize("name", ["<script>alert(1)</script>"])
def test_text_is_escaped(name: str) -> None:
    page = render(collect(_study(), title=name, description=name, metric="val/loss"))
    assert name not in page.html


def test_a_choice_tried_once_shows_its_value_without_a_spread() -> None:
    study = optuna.create_study()
    dist = {"model.batch_norm": optuna.distributions.CategoricalDistribution([False, True])}
    for choice, value in ((True, 0.4), (False, 0.6), (False, 0.8)):
        study.add_trial(optuna.trial.create_trial(
            params={"model.batch_norm": choice}, distributions=dist, value=value))
    html = render(collect(study, title="t", description="", metric="val/loss")).html
    assert "<td>0.4000</td>" in html  # batch norm on: one trial, no "± 0"
    assert "0.7000 ± 0.1414" in html  # off: two trials, their spread
    assert "± 0.0000" not in html
