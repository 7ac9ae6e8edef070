"""What users see in the MLflow UI, in a real browser (slow: starts ``mlflow server`` and
Debian's chromium, driven headless by Playwright).

After a tiny search with a complete, a pruned and a failed trial, the URL the search prints
must open the experiment's runs table in MLflow's "Model training" view (the Model registry in
the sidebar), sorted by the objective with the searched parameters as columns, and the three
outcomes must read apart in the run names; a trial's description opens its train and validation
loss in one chart. After the shipped capacity and regularization studies, the report page each
search writes must answer its questions, section by section.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml

from tests.servers import mlflow_server
from tests.test_search import DIVERGE_LR, diverging, journal, proj, search

pytestmark = pytest.mark.slow
__all__ = ["diverging", "proj"]  # fixtures shared with test_search

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def mlflow_ui(proj: Path, tmp_path: Path) -> Iterator[str]:
    with mlflow_server(f"sqlite:///{proj / 'mlruns' / 'mlflow.db'}",
                       artifacts=proj / "mlruns" / "artifacts",
                       log=tmp_path / "mlflow-server.log") as base:
        yield base


def test_the_printed_url_opens_the_runs_table_best_first_with_outcomes_apart(
    proj: Path, diverging: None, mlflow_ui: str, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    study = optuna.create_study(study_name="tiny-digits", storage=journal(proj))
    for params in (
        {"model.width": 8, "train.optimizer": "adam", "train.lr": 0.01},
        {"model.width": 16, "train.optimizer": "adam", "train.lr": 0.02},
        {"model.width": 8, "train.optimizer": "adam", "train.lr": DIVERGE_LR},  # fails
        {"model.width": 8, "train.optimizer": "sgd", "train.lr": 5.0},  # pruned
    ):
        study.enqueue_trial(params)
    assert search(proj, "--n-trials", "4") == 0
    out = capsys.readouterr().out
    (printed,) = [w for w in out.split() if "workflowType=machine_learning" in w]
    url = printed.replace("http://127.0.0.1:5000", mlflow_ui)
    trials = optuna.load_study(study_name="tiny-digits", storage=journal(proj)).trials
    best = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value or 0)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url)
        page.get_by_text("trial-3 pruned").wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "runs.png"))
        text = page.inner_text("body")
        # The saved view: sorted by the objective, best first, the searched params as columns.
        names = page.locator("[role=row] a").all_inner_texts()
        headers = page.locator("[role=columnheader]").all_inner_texts()

        # A trial's description opens MLflow's chart of its train and validation loss together.
        page.goto(f"{mlflow_ui}/#/experiments/{url.split('/experiments/')[1].split('/')[0]}"
                  f"/runs/{best.user_attrs['mlflow_run_id']}?workflowType=machine_learning")
        link = page.get_by_text("loss/train vs loss/val").first
        link.wait_for(timeout=60_000)
        with page.context.expect_page() as opened:
            link.click()
        chart = opened.value
        chart.get_by_text(f"trial-{best.number} (loss/val)").first.wait_for(timeout=60_000)
        chart.screenshot(path=str(tmp_path / "chart.png"))
        chart_text = chart.inner_text("body")

        # The champion's logged-model page names its registry version.
        from mlflow import MlflowClient

        from pipeline import promote

        assert promote.main(["--params", str(proj / "params.yaml"), "--study", "tiny"]) == 0
        version = MlflowClient().get_model_version_by_alias("pipeline-digits", "champion")
        model_id = version.source.removeprefix("models:/")
        experiment = url.split("/experiments/")[1].split("/")[0]
        page.goto(f"{mlflow_ui}/#/experiments/{experiment}/models/{model_id}"
                  "?workflowType=machine_learning")
        page.get_by_text("pipeline-digits").first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "model.png"))
        model_text = page.inner_text("body")
        browser.close()
    assert "Not registered" not in model_text
    assert f"trial-{best.number}" in model_text  # the logged model carries its trial's name
    assert "Model registry" in text  # the "Model training" view, not GenAI's
    assert "trial-2 failed" in text and "trial-3 pruned" in text and "trial-0" in text
    assert "Sort: best_val_loss" in text
    assert names[0] == f"trial-{best.number}", names
    assert {"best_val_loss", "model.width", "train.lr", "train.optimizer"} <= set(headers)
    assert f"trial-{best.number} (loss/train)" in chart_text  # both curves, one chart


def _page_sections(index: Path, shot: Path) -> tuple[dict[str, str], dict[str, int], list[str]]:
    """Open the page from disk: each section's text, each picture's drawn width, requests."""
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(index.as_uri())
        page.get_by_text("Leaderboard").wait_for(timeout=30_000)
        page.screenshot(path=str(shot), full_page=True)
        sections = page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('section')]"
            ".map(s => [s.id, s.innerText]))")
        images = page.evaluate(
            "Object.fromEntries([...document.images].map(i => [i.id, i.complete ? "
            "i.naturalWidth : 0]))")
        browser.close()
    assert not errors, errors
    return sections, images, [u for u in requests if not u.startswith(("file:", "data:"))]


SECTIONS = ["leaderboard", "capacity", "curves", "train-vs-val", "choices", "pruning",
            "importance", "every"]


def _shipped_study(proj: Path, name: str, n_trials: int) -> Path:
    """The shipped study file, searched on the test's small digits cache (5 epochs)."""
    from pipeline.search import main

    raw = yaml.safe_load((proj / "params.yaml").read_text())
    raw["train"]["max_epochs"] = 5
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["--params", str(proj / "params.yaml"), "--study", name, "--n-trials",
                 str(n_trials)]) == 0
    return proj / "reports" / "studies" / f"{name}-page" / "index.html"


def test_the_capacity_page_answers_how_big_section_by_section(
    proj: Path, tmp_path: Path
) -> None:
    """After a capacity search the page every search writes has each section drawn, from disk,
    offline; the capacity section names the best and the smallest model within one SE."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed: apt-get install chromium")
    index = _shipped_study(proj, "capacity", 10)
    sections, images, requests = _page_sections(index, tmp_path / "capacity-page.png")
    assert list(sections) == SECTIONS
    for name in ("leaderboard", "capacity", "curves", "train_vs_val", "choices", "pruning",
                 "importance"):
        assert images.get(name, 0) > 100, (name, images)
    assert not requests, requests  # nothing fetched: it renders offline
    assert "Best: trial" in sections["capacity"]
    assert "Smallest within one standard error" in sections["capacity"]
    assert "model.hidden_layers" in sections["choices"] and "model.width" in sections["choices"]
    assert "False-prune rate" in sections["pruning"]
    assert "complete trials" in sections["importance"] or images["importance"] > 100


def test_the_regularization_page_answers_batch_norm_and_dropout_with_spreads(
    proj: Path, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed: apt-get install chromium")
    index = _shipped_study(proj, "regularization", 12)
    sections, images, requests = _page_sections(index, tmp_path / "regularization-page.png")
    assert list(sections) == SECTIONS and not requests
    choices = sections["choices"]
    assert images["choices"] > 100
    verdicts = {line.split(":")[0]: line for line in choices.splitlines() if ": " in line}
    for name in ("model.batch_norm", "model.dropout", "train.weight_decay"):
        said = verdicts[name]
        assert any(w in said for w in ("beats", "cannot be told apart", "Cannot tell")), said
    rows = [line.split("\t") for line in choices.splitlines() if line.startswith("model.")]
    bn = {r[1]: r[2] for r in rows if r[0] == "model.batch_norm"}
    assert set(bn) == {"True", "False"}
    assert any("±" in spread for spread in bn.values()), bn  # mean ± std over the trials
    assert any(r[0] == "model.dropout" and "±" in r[2] for r in rows), rows
