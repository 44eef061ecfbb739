"""Parameter checks shared by the explainers: sklearn's check_scalar, with bools refused."""

from __future__ import annotations

import numbers
from collections.abc import Collection
from typing import Any

from sklearn.utils import check_scalar


def check_number(
    value: Any,
    name: str,
    *,
    integer: bool = False,
    min_val: float | None = 0,
    max_val: float | None = None,
    include_boundaries: str = "neither",
) -> None:
    """Raise TypeError / ValueError (naming ``name``) unless value is a number in the range.

    The default range is strictly positive.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, not a bool ({value!r}).")
    check_scalar(
        value,
        name,
        numbers.Integral if integer else numbers.Real,
        min_val=min_val,
        max_val=max_val,
        include_boundaries=include_boundaries,
    )


def check_choice(value: Any, name: str, options: Collection[Any]) -> None:
    """Raise ValueError unless value is one of ``options``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {sorted(map(repr, options))}; got {value!r}.")
