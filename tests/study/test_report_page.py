"""The study page: built from real (in-memory) Optuna studies, rendered without a browser.

The MLflow side is a stand-in here (the real one: ``tests/test_search.py`` builds the page from
a real search and its MLflow store), so its names come from the module that defines them:
:data:`report_page.TRAIN_CURVE` / :data:`report_page.VAL_CURVE` are
:func:`pipeline.tracking.curve_name` of the history keys, and the summaries are
:func:`pipeline.tracking.summary_name`.
"""

from __future__ import annotations

import datetime

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from pipeline import tracking
from pipeline.study import page_figures as fig
from pipeline.study import report_page
from pipeline.study.audit import pruning_summary
from pipeline.study.report import N_PARAMS_ATTR
from pipeline.study.report_page import RunData, Sources, StudyView, collect, render, write_page

optuna.logging.set_verbosity(optuna.logging.WARNING)
T0 = datetime.datetime(2026, 1, 1)


def test_the_page_reads_the_curve_names_the_runs_are_written_with() -> None:
    # The names a trial's MLflow run holds (tracking.runs) are the names the page reads.
    assert report_page.TRAIN_CURVE == tracking.curve_name("train/loss") == "loss/train"
    assert report_page.VAL_CURVE == tracking.curve_name("val/loss") == "loss/val"


def _study() -> optuna.Study:
    study = optuna.create_study(direction="minimize")
    for i in range(4):
        trial = study.ask({"model.width": IntDistribution(16, 512, log=True),
                           "model.batch_norm": CategoricalDistribution([False, True])})
        for epoch in range(1, 4 if i != 3 else 2):
            trial.report(1.0 / (epoch + i), epoch)
        trial.set_user_attr("value_std", 0.01 * (i + 1))
        trial.set_user_attr("folds", 4)
        trial.set_user_attr("epochs", 3)
        trial.set_user_attr(N_PARAMS_ATTR, 1000 * 4**i)
        trial.set_user_attr("mlflow_run_id", f"run{i}")
        if i == 3:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, 0.5 - 0.1 * i)
    study.tell(study.ask(), state=TrialState.FAIL)
    return study


def _runs(run_id: str, with_curves: bool) -> RunData:
    i = int(run_id.removeprefix("run"))
    curves = {report_page.TRAIN_CURVE: [(1, 0.9), (2, 0.5), (3, 0.3)],
              report_page.VAL_CURVE: [(1, 1.0), (2, 0.7), (3, 0.6)]} if with_curves else {}
    return RunData(curves=curves, summaries={tracking.summary_name("train/loss"): 0.1 * i,
                                             tracking.summary_name("val/loss"): 0.5 - 0.1 * i})


def test_page_draws_every_section_from_the_study_and_its_runs(tmp_path) -> None:
    view = collect(_study(), title="capacity-digits", description="How wide?",
                   metric="val/loss", sources=Sources(runs=_runs))
    assert [t.state for t in view.trials] == ["COMPLETE"] * 3 + ["PRUNED", "FAIL"]
    assert view.importance_trials == 3
    assert [t.train_value for t in view.trials[:3]] == [0.0, 0.1, 0.2]
    page = render(view)
    assert set(page.pngs) == {"leaderboard.png", "capacity.png", "curves.png",
                              "train_vs_val.png", "choices.png", "pruning.png", "importance.png"}
    assert all(png.startswith(b"\x89PNG") for png in page.pngs.values())
    text = page.html
    assert "0.3000 ± 0.0300" in text  # the best trial, with its fold spread
    assert "3 complete, 1 pruned, 1 failed" in text
    for key in ("leaderboard", "capacity", "curves", "train-vs-val", "choices", "pruning",
                "importance", "every"):
        assert f'<section id="{key}">' in text
    assert "No train vs validation" not in text
    assert "http://" not in text and "https://" not in text  # renders offline: nothing fetched
    index = write_page(page, tmp_path / "page")
    assert index.read_text() == text
    assert (tmp_path / "page" / "capacity.png").read_bytes() == page.pngs["capacity.png"]


def test_capacity_answer_names_the_best_and_the_smallest_within_one_standard_error() -> None:
    html = render(collect(_study(), title="t", description="", metric="val/loss",
                          sources=Sources(runs=_runs))).html
    # Best: trial 2 (0.3 ± 0.03 over 4 folds: standard error 0.015, threshold 0.315); none of
    # the smaller ones is within it, so the best is also the pick.
    assert "Best: trial 2, val/loss 0.3000 with 16,000 parameters (standard error 0.0150)" in html
    assert "trial 2, 0.3000 with 16,000 parameters — the best itself" in html


def test_smallest_within_one_standard_error_is_marked_when_it_differs() -> None:
    study = optuna.create_study()
    dist = {"model.width": IntDistribution(8, 1024, log=True)}
    for width, value, std in ((16, 0.31, 0.02), (256, 0.30, 0.04), (1024, 0.29, 0.04)):
        study.add_trial(create_trial(params={"model.width": width}, distributions=dist,
                                     value=value, user_attrs={"value_std": std, "folds": 4,
                                                              N_PARAMS_ATTR: width * 100}))
    view = collect(study, title="t", description="", metric="val/loss")
    rule = fig.capacity_rule(view)
    assert rule is not None and rule.best.number == 2 and rule.pick.number == 0
    assert rule.threshold == pytest.approx(0.29 + 0.04 / 2)
    html = render(view).html
    assert "Smallest within one standard error (threshold 0.3100): trial 0" in html
    assert "--select smallest_within_1se" in html
    assert '<tr class="pick"><td>3</td><td>0</td>' in html  # marked in the leaderboard


def test_an_empty_study_renders_with_explanations() -> None:
    view = collect(optuna.create_study(), title="t", description="", metric="val/loss")
    page = render(view)
    assert page.pngs == {}
    assert "not enough trials" in page.html and "Nothing was searched yet" in page.html


@pytest.mark.parametrize("name", ["<script>alert(1)</script>"])
def test_text_is_escaped(name: str) -> None:
    page = render(collect(_study(), title=name, description=name, metric="val/loss"))
    assert name not in page.html


def _choices_study(groups: dict[object, list[float]], choices: list[object]) -> optuna.Study:
    study = optuna.create_study()
    dist = {"train.optimizer": CategoricalDistribution(choices)}
    for choice, values in groups.items():
        for value in values:
            study.add_trial(create_trial(params={"train.optimizer": choice}, distributions=dist,
                                         value=value))
    return study


def test_a_choice_tried_too_rarely_or_never_says_the_study_cannot_tell() -> None:
    study = _choices_study({"adam": [0.30, 0.31, 0.32], "sgd": [0.5]},
                           ["adam", "sgd", "rmsprop"])
    view = collect(study, title="t", description="", metric="val/loss")
    groups = fig.choice_groups(view, "train.optimizer")
    assert [(g.label, len(g.values)) for g in groups] == [("adam", 3), ("sgd", 1),
                                                          ("rmsprop", 0)]
    said = fig.verdict(groups, "minimize")
    assert said.startswith("Cannot tell")
    assert "never tried: rmsprop" in said
    assert "too few complete trials to compare: sgd (1 complete)" in said
    html = render(view).html
    assert "<td>0.5000</td>" in html  # sgd: one trial, its value without "± 0"
    assert "0.3100 ± 0.0100" in html and "± 0.0000" not in html


def test_choices_read_apart_only_beyond_twice_the_standard_error() -> None:
    clear = _choices_study({"adam": [0.30, 0.31, 0.32], "sgd": [0.50, 0.52, 0.51]},
                           ["adam", "sgd"])
    view = collect(clear, title="t", description="", metric="val/loss")
    assert fig.verdict(fig.choice_groups(view, "train.optimizer"), "minimize").startswith(
        "adam beats sgd by 0.2000")
    close = _choices_study({"adam": [0.30, 0.36, 0.33], "sgd": [0.31, 0.37, 0.34]},
                           ["adam", "sgd"])
    view = collect(close, title="t", description="", metric="val/loss")
    assert "cannot be told apart" in fig.verdict(fig.choice_groups(view, "train.optimizer"),
                                                 "minimize")


def test_a_numeric_choice_is_compared_by_thirds_of_its_range() -> None:
    study = optuna.create_study()
    dist = {"model.dropout": FloatDistribution(0.0, 0.6)}
    for dropout, value in ((0.05, 0.5), (0.1, 0.52), (0.15, 0.51), (0.5, 0.3), (0.55, 0.31),
                           (0.45, 0.32)):
        study.add_trial(create_trial(params={"model.dropout": dropout}, distributions=dist,
                                     value=value))
    view = collect(study, title="t", description="", metric="val/loss")
    groups = fig.choice_groups(view, "model.dropout")
    assert [g.label for g in groups] == ["low 0–0.2", "middle 0.2–0.4", "high 0.4–0.6"]
    assert fig.verdict(groups, "minimize").startswith("high 0.4–0.6 beats low 0–0.2")


def _timed(study: optuna.Study, *, state: TrialState, curve: list[float], seconds: float,
           value: float | None = None) -> None:
    study.add_trial(optuna.trial.FrozenTrial(
        number=0, trial_id=0, state=state, value=value, params={"model.width": 8},
        distributions={"model.width": IntDistribution(4, 16)},
        intermediate_values=dict(enumerate(curve, start=1)), user_attrs={"epochs": len(curve)},
        system_attrs={}, datetime_start=T0,
        datetime_complete=T0 + datetime.timedelta(seconds=seconds)))


def test_what_pruning_cost_from_the_trials_and_the_audit_when_there_is_one() -> None:
    study = optuna.create_study()
    for worst in (0.30, 0.40):  # two complete trials of 10 epochs, 60 s each
        _timed(study, state=TrialState.COMPLETE, curve=[0.9] * 9 + [worst], seconds=60,
               value=worst)
    _timed(study, state=TrialState.PRUNED, curve=[0.9, 0.8, 0.35], seconds=20)  # better than 0.4
    _timed(study, state=TrialState.PRUNED, curve=[0.9, 0.8, 0.7, 0.6], seconds=20)
    view = collect(study, title="t", description="", metric="val/loss",
                   sources=Sources(max_epochs=30))
    cost = fig.pruning_cost(view)
    assert (cost.pruned, cost.epochs_run, cost.full_epochs, cost.epochs_saved) == (2, 7, 10, 13)
    assert cost.saved_share == pytest.approx(13 / (27 + 13))
    assert cost.time_share == pytest.approx(40 / 160)
    assert cost.stopped_at == [(3, 1), (4, 1)] and cost.better_than_worst == 1
    html = render(view).html
    assert "2 trial(s) pruned after 7 epochs in all" in html
    assert "32% of the study&#x27;s epochs saved" in html
    assert "Pruned trials used 25% of the trials&#x27; time" in html
    assert "Stopped at: epoch 3 (1), epoch 4 (1) of at most 30." in html
    assert "1 pruned trial(s) were, when stopped, better than the worst complete" in html
    assert "False-prune rate: not estimated" in html
    # The audit's summary as the search writes it (pipeline.study.audit), from real trials.
    from tests.study.test_pruning_trust import audited_study

    pruning = pruning_summary(audited_study().trials, "minimize")
    audited = collect(study, title="t", description="", metric="val/loss",
                      sources=Sources(pruning=pruning))
    html = render(audited).html
    assert ("False-prune rate (pruning audit: 2 trial(s) the pruner would have stopped were "
            "let finish; 0 of 1 ended better than the best of their time): 0%; training time "
            f"saved: about {pruning['saved_share_estimate']:.0%}.") in html


def test_diverged_values_are_clipped_not_allowed_to_flatten_the_rest() -> None:
    values = [0.3, 0.25, 0.2, 0.18, 0.17, 0.16, 0.15, 2.3]
    top = fig.robust_top(values, log=True)
    assert top is not None and 0.3 < top < 2.3
    assert fig.robust_top([0.3, 0.25, 0.2, 0.18], log=True) is None  # nothing diverged


def test_older_trials_get_their_parameter_count_from_their_params() -> None:
    study = optuna.create_study()
    dist = {"model.width": IntDistribution(4, 64)}
    for width in (4, 64):
        study.add_trial(create_trial(params={"model.width": width}, distributions=dist,
                                     value=0.1))
    view = collect(study, title="t", description="", metric="val/loss",
                   sources=Sources(count_params=lambda p: p["model.width"] * 10))
    assert [t.n_params for t in view.trials] == [40, 640]


def test_curves_clip_a_diverged_trial_not_every_trials_first_epoch() -> None:
    def study_with(peaks: list[float]) -> StudyView:
        study = optuna.create_study()
        dist = {"model.width": IntDistribution(4, 64)}
        for i, peak in enumerate(peaks):
            curve = {1: peak, 2: 0.3, 3: 0.1 + 0.001 * i}
            study.add_trial(create_trial(params={"model.width": 4 + i}, distributions=dist,
                                         value=curve[3], intermediate_values=curve))
        return collect(study, title="t", description="", metric="val/loss")

    usual = [1.5, 1.4, 1.6, 1.45, 1.55, 1.5]  # every loss starts high: nothing diverged
    assert fig.robust_top([max(c for c in (p, 0.3, 0.1)) for p in usual], log=True) is None
    diverged = study_with([*usual[:5], 80.0])
    peaks = [max(v for _, v in t.reported) for t in diverged.trials]
    top = fig.robust_top(peaks, log=True)
    assert top is not None and 1.6 < top < 80.0
