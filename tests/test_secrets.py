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


PASSWORDS = ["p#ss", "a/b", "wh?t", "at@sign", "co:lon", "50%off", "with space", "pässwörd€",
             "all #/?@:% ü"]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("encoded", [True, False], ids=["encoded", "as-typed"])
def test_every_character_a_password_may_hold(password: str, encoded: bool) -> None:
    """Whether the user percent-encodes the password (as libpq and SQLAlchemy expect) or types it
    as is, it is found, and no spelling of it survives redaction."""
    from sqlalchemy.engine import URL

    if encoded:
        url = URL.create("postgresql+psycopg", username="u", password=password, host="h",
                         port=5432, database="db").render_as_string(hide_password=False)
    else:
        url = f"postgresql+psycopg://u:{password}@h:5432/db"
    assert has_password(url)
    assert redact(url) == "postgresql+psycopg://u:***@h:5432/db"
    text = redact_text(f"could not connect to {url} (password {password})", url)
    assert text == "could not connect to postgresql+psycopg://u:***@h:5432/db (password ***)"
