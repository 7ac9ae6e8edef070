"""The one owner of passwords in URLs: detection and redaction with real URL parsers."""

from __future__ import annotations

import pytest

from pipeline.secrets import has_password, redact, redact_text


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://user:secret@db.example:5432/mlflow",
     "postgresql://user:***@db.example:5432/mlflow"),
    ("postgresql+psycopg2://u:p%40ss@h/db", "postgresql+psycopg2://u:***@h/db"),
    ("http://mlflow.example:5000", "http://mlflow.example:5000"),
    ("sqlite:////abs/mlruns/mlflow.db", "sqlite:////abs/mlruns/mlflow.db"),
    ("postgresql://h/db?user=u&password=hunter2", "postgresql://h/db?user=u&password=***"),
    # Characters naive parsing splits on: '#' (fragment), '/' (path) and '?' (query).
    ("postgresql+psycopg://u:p#ss@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
    ("postgresql+psycopg://u:s3cret#PW/9?f2@127.0.0.1:5432/optuna",
     "postgresql+psycopg://u:***@127.0.0.1:5432/optuna"),
])
def test_redact(url: str, expected: str) -> None:
    assert redact(url) == expected
    assert has_password(url) == (url != expected)


def test_redact_text_removes_every_spelling() -> None:
    url = "postgresql+psycopg://u:p#ss/w?rd@h/db"
    text = f"connection to {url} failed: password p#ss/w?rd or p%23ss%2Fw%3Frd rejected"
    out = redact_text(text, url)
    assert "p#ss" not in out and "p%23ss" not in out and "***" in out
