"""Validation of everything a caller hands us: scores, env names, namespaces.

Bad input must fail loudly *before* anything reaches Redis, with an error that names the first
bad position, so a caller never finds half a batch merged. The checks are on the hot path of
every ``normalize`` call, so plain lists of floats take a fast path.
"""

from __future__ import annotations

import math
import numbers
import unicodedata
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Scores", "coerce_scores", "validate_env", "validate_namespace"]

#: Validated scores: a list of finite Python floats, or a 1-d float64 numpy array.
Scores = list[float] | npt.NDArray[np.float64]

MAX_NAME_LENGTH = 256
#: Unicode categories refused in names: controls (C0, DEL, C1) and line/paragraph separators,
#: which would make keys unreadable or break lines in redis-cli and logs.
_UNPRINTABLE = frozenset({"Cc", "Zl", "Zp"})
#: Batches at least this long are handled as numpy arrays (validated, summarized and normalized
#: in one array); shorter ones are faster as plain lists.
NUMPY_MIN_BATCH = 64
_JUST_FLOAT = {float}


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _coerce_one(position: int, value: Any) -> float:
    """Turn one element into a finite float, or raise naming its position."""
    if isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"scores[{position}] is a {type(value).__name__} ({_describe(value)}), "
                        "not a real number")
    if isinstance(value, numbers.Real):
        try:
            result = float(value)
        except OverflowError:
            raise ValueError(f"scores[{position}] = {_describe(value)} is too large for a float") from None
    elif isinstance(value, Iterable):
        raise TypeError(f"scores[{position}] is a nested {type(value).__name__}; scores must be a "
                        "flat sequence of real numbers")
    else:
        raise TypeError(f"scores[{position}] is a {type(value).__name__} ({_describe(value)}), "
                        "not a real number")
    if not math.isfinite(result):
        raise ValueError(f"scores[{position}] = {_describe(value)} is not finite")
    return result


def _coerce_array(scores: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    if scores.ndim != 1:
        raise TypeError(f"scores must be a 1-d array, got an array of shape {scores.shape}")
    if scores.dtype.kind not in "fiub":
        # Object or string arrays: check element by element for a precise message.
        return np.array([_coerce_one(i, v) for i, v in enumerate(scores.tolist())], dtype=np.float64)
    values = scores.astype(np.float64, copy=False)
    finite = np.isfinite(values)
    if not finite.all():
        position = int(np.argmin(finite))
        raise ValueError(f"scores[{position}] = {scores[position]!r} is not finite")
    return values


def coerce_scores(scores: Any) -> Scores:
    """Validate ``scores`` and return them as finite floats.

    Accepts any flat iterable of real numbers (ints, floats, bools, numpy scalars) and 1-d numpy
    arrays. Raises ``TypeError`` for a non-iterable, a bare string, or an element that is not a
    real number (``None``, a string, a nested list), and ``ValueError`` for NaN or +/-inf; the
    message names the first bad position. numpy scalars become Python floats here because
    redis-py would otherwise send ``np.float64(0.1)`` as that very text.
    """
    if isinstance(scores, np.ndarray):
        return _coerce_array(scores)
    if isinstance(scores, (str, bytes, bytearray)):
        raise TypeError(f"scores must be an iterable of real numbers, not a bare {type(scores).__name__}")
    items: list[Any]
    if type(scores) is list:
        items = scores
    else:
        try:
            items = list(scores)
        except TypeError:
            raise TypeError("scores must be an iterable of real numbers, got "
                            f"{type(scores).__name__}") from None
    if len(items) >= NUMPY_MIN_BATCH:
        # One C pass: numpy infers a numeric dtype only when every element is a real number
        # (a string, None or a nested list gives another dtype, another shape, or an error), so
        # anything else falls through to the element-by-element check that names the culprit.
        try:
            array = np.array(items)
        except (ValueError, TypeError, OverflowError):
            array = None
        if array is not None and array.ndim == 1 and array.dtype.kind in "fiub":
            return _coerce_array(array)
    # Fast path, the common case in a trainer: a short list of Python floats. The sum of finite
    # floats is finite unless it overflows, and any NaN or infinity makes it NaN or infinite,
    # so a finite sum proves every element finite (an overflowing sum takes the slow path).
    elif set(map(type, items)) == _JUST_FLOAT and math.isfinite(sum(items)):
        return items
    values = [value if type(value) is float and math.isfinite(value) else _coerce_one(i, value)
              for i, value in enumerate(items)]
    return np.array(values, dtype=np.float64) if len(values) >= NUMPY_MIN_BATCH else values


def _validate_name(what: str, name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__}")
    if not name:
        raise ValueError(f"{what} must not be empty")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {name!r} cannot be encoded as UTF-8 (a lone surrogate)") from None
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")
    for position, char in enumerate(name):
        if char in "{}":
            raise ValueError(f"{what} {name!r} contains {char!r} at position {position}: braces are "
                             "reserved for the Redis Cluster hash tag")
        if unicodedata.category(char) in _UNPRINTABLE:
            raise ValueError(f"{what} {name!r} contains a control or line-separator character at "
                             f"position {position}")
    return name


def validate_env(env: Any) -> str:
    """Check an environment name: a non-empty str of at most 256 characters, without ``{``, ``}``
    (they would break the hash tag that keeps an env's keys in one cluster slot), control
    characters or line separators (they make keys unreadable in ``redis-cli``), encodable as
    UTF-8."""
    return _validate_name("env name", env)


def validate_namespace(namespace: Any) -> str:
    """Check a key namespace with the same rules as env names."""
    return _validate_name("namespace", namespace)


def validate_batch_id(batch_id: Any) -> str | None:
    """Check a caller's name for a batch: ``None`` (no name), an ``int`` (not ``bool``: ``True``
    is more likely a mistake than a name) or a non-empty ``str`` of at most 256 characters.
    Returned as text, so ``7`` and ``"7"`` name the same batch."""
    if batch_id is None:
        return None
    if isinstance(batch_id, bool) or not isinstance(batch_id, (int, str)):
        raise TypeError(f"batch_id must be a str, an int or None, got {type(batch_id).__name__}")
    text = str(batch_id)
    if not text:
        raise ValueError("batch_id must not be empty")
    if len(text) > MAX_NAME_LENGTH:
        raise ValueError(f"batch_id is {len(text)} characters long; the limit is {MAX_NAME_LENGTH}")
    return text
