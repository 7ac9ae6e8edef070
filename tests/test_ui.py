"""What users see in the MLflow UI, in a real browser (slow: starts ``mlflow server`` and
Debian's chromium, driven headless by Playwright).

After a tiny search with a complete, a pruned and a failed trial, the URL the search prints
must open the experiment's runs table in MLflow's "Model training" view (the Model registry in
the sidebar), and the three outcomes must read apart in the run names.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tests.servers import mlflow_server
from tests.test_search import DIVERGE_LR, diverging, journal, proj, search

pytestmark = pytest.mark.slow
__all__ = ["diverging", "proj"]  # fixtures shared with test_search

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def mlflow_ui(proj: Path, tmp_path: Path) -> Iterator[str]:
    with mlflow_server(f"sqlite:///{proj / 'mlruns' / 'mlflow.db'}",
                       artifacts=proj / "mlruns" / "artifacts",
                       log=tmp_path / "mlflow-server.log") as base:
        yield base


def test_the_printed_url_opens_the_runs_table_with_outcomes_apart(
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

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url)
        page.get_by_text("search-", exact=False).first.wait_for(timeout=60_000)
        # Expand the parent run (the button in its name cell) to show its trials.
        page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
        page.get_by_text("trial-3 pruned").wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "runs.png"))
        text = page.inner_text("body")

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
    assert "Model registry" in text  # the "Model training" view, not GenAI's
    assert "trial-2 failed" in text and "trial-3 pruned" in text and "trial-0" in text


def test_the_study_report_page_renders_offline(
    proj: Path, diverging: None, tmp_path: Path
) -> None:
    """The page DVC's search stage writes, opened from disk: every picture drawn, no network."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    from pipeline import report

    assert search(proj, "--n-trials", "4") == 0
    assert report.main(["--params", str(proj / "params.yaml"), "--study", "tiny"]) == 0
    index = proj / "reports" / "studies" / "tiny-page" / "index.html"
    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(index.as_uri())
        page.get_by_text("Leaderboard").wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        broken = page.evaluate(
            "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length"
        )
        n_images = page.evaluate("document.images.length")
        text = page.inner_text("body")
        browser.close()
    assert n_images >= 4 and broken == 0
    assert not errors, errors
    assert not [u for u in requests if not u.startswith(("file:", "data:"))]
    for heading in ("Leaderboard", "Learning curves of the best trials", "Every trial"):
        assert heading in text
