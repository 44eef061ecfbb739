"""Parameter checks shared by the explainers: sklearn's check_scalar, with bools, NaN and infinity refused."""

from __future__ import annotations

import math
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
    """Raise TypeError / ValueError (naming ``name``) unless value is a finite number in the range.

    The default range is strictly positive.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, not a bool ({value!r}).")
    # check_scalar's range test is a comparison, which NaN passes; and no parameter here means
    # anything at infinity (it would reach the solvers as inf * 0 = NaN)
    if isinstance(value, numbers.Real) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}.")
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


def check_params_selection(params: Any) -> None:
    """Raise ValueError unless params is 'head', 'all' or a non-empty list of module / parameter names."""
    names = isinstance(params, (list, tuple)) and params and all(isinstance(p, str) for p in params)
    if not (names or (isinstance(params, str) and params in ("head", "all"))):
        raise ValueError(
            f"params must be 'head', 'all' or a list of module/parameter names (a single name as [name]); "
            f"got {params!r}."
        )
