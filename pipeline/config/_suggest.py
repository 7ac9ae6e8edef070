"""The one "did you mean" rule for every name a user can mistype."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, options: Iterable[str], *, listing: bool = True) -> str:
    """A hint to append to an error about an unknown name.

    ``" (did you mean 'width'?); allowed: depth, width"``: the closest option when one is close
    enough, then (with ``listing``) every option in the order given.
    """
    options = [str(o) for o in options]
    close = difflib.get_close_matches(word, options, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if not listing:
        return hint
    return f"{hint}; allowed: {', '.join(options) if options else 'none'}"
