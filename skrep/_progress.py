"""tqdm progress bars that stay quiet unless asked for and on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def progress(it: Iterable[T], verbose: int, desc: str, total: int | None = None) -> Iterable[T]:
    """Wrap ``it`` in a tqdm bar when ``verbose > 0``, tqdm is installed and stderr is a TTY."""
    if not verbose:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return it
    return tqdm(it, desc=desc, total=total, disable=not sys.stderr.isatty() and verbose < 2, leave=False)
