"""The one owner of passwords in URLs: detection and redaction, with real URL parsers.

Database URLs (``postgresql+psycopg://user:p#ss/w?rd@host/db``) are parsed by SQLAlchemy's
``make_url``, which accepts every character a password may hold except a raw ``@`` (such a
password is taken to run to the URL's last ``@``). Anything that leaves the process (a log line,
an MLflow tag or param, a report, an error message) goes through :func:`redact` or
:func:`redact_text` first.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["MASK", "has_password", "password_of", "redact", "redact_text"]

MASK = "***"
# Credentials passed as query arguments (``?password=…``, ``&token=…``).
_SECRET_QUERY = re.compile(r"(?i)((?:password|passwd|pwd|token|secret|api_key|key)=)[^&]*")
_QUERY_KEYS = ("password", "passwd", "pwd", "token", "secret", "api_key", "key")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def password_of(url: str) -> str | None:
    """The password in ``url`` (decoded), or None; never raises on a malformed URL."""
    if not _SCHEME.match(url):
        return None
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        parsed = None
    if parsed is not None and parsed.password is not None and "@" not in (parsed.host or ""):
        return str(parsed.password)
    # SQLAlchemy ends a password at its first '@'. One typed with a raw '@' (or with characters
    # it cannot parse at all) runs to the last '@': mask too much rather than leak the rest.
    split = _split_userinfo(url)
    if split is None or any(c in split[1] for c in "/?#"):
        return None
    return unquote(split[2])


def _split_userinfo(url: str) -> tuple[str, str, str, str] | None:
    """``scheme://user:password@hostinfo`` split at the first ':' after the scheme and the
    last '@', or None without both: the one reading of where a password ends."""
    scheme, _, rest = url.partition("://")
    userinfo, at, hostinfo = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not (at and colon):
        return None
    return scheme, user, password, hostinfo


def _query_secrets(url: str) -> list[str]:
    query = url.partition("?")[2]
    found = []
    for part in query.split("&"):
        key, sep, value = part.partition("=")
        if sep and key.lower() in _QUERY_KEYS and value:
            found.append(value)
    return found


def has_password(url: str) -> bool:
    """True when ``url`` carries a password (in the userinfo or as a query argument)."""
    return password_of(url) is not None or bool(_query_secrets(url))


def redact(url: str) -> str:
    """``url`` with its password (userinfo or query argument) replaced by ``***``."""
    password = password_of(url)
    out = url
    if password is not None:
        split = _split_userinfo(url)
        if split is not None:
            scheme, user, _, hostinfo = split
            out = f"{scheme}://{user}:{MASK}@{hostinfo}"
        else:  # unusual form: fall back to removing every spelling of the password
            out = _mask(url, password)
    return _SECRET_QUERY.sub(rf"\1{MASK}", out)


def _forms(secret: str) -> set[str]:
    """Every spelling of ``secret`` that may appear in text: raw, percent-encoded, decoded."""
    return {f for f in (secret, unquote(secret), quote(secret, safe=""), quote(secret)) if f}


def _mask(text: str, secret: str) -> str:
    for form in sorted(_forms(secret), key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


def redact_text(text: str, *urls: str | None) -> str:
    """``text`` with each URL redacted and its secrets masked wherever else they appear."""
    for url in urls:
        if not url:
            continue
        text = text.replace(url, redact(url))
        secrets = _query_secrets(url)
        password = password_of(url)
        if password is not None:
            secrets.append(password)
        for secret in secrets:
            text = _mask(text, secret)
    return text
