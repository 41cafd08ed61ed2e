"""Independent answers the harnesses check the code under test against.

Each is written from the specification (Python's own UTF-8 decoder, the nesting rule of
``~wse:hi``), not from the implementation it checks.
"""

from __future__ import annotations

import math
from typing import Any

# Whatever an incomplete UTF-8 sequence still needs, one of these completes it when anything
# does: the second byte of a sequence is limited to A0-BF after E0, 80-9F after ED, 90-BF
# after F0 and 80-8F after F4 (RFC 3629 §4), and every later byte may be 80-BF.
_SECOND_BYTES = (b"\x80", b"\x90", b"\xa0", b"\xbf")
_COMPLETIONS = (b"", *(s + b"\x80" * n for s in _SECOND_BYTES for n in range(3)))


def valid_utf8(data: bytes) -> bool:
    """Whether Python's own decoder takes ``data`` as UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def utf8_completable(prefix: bytes) -> bool:
    """Whether some valid UTF-8 text starts with ``prefix`` (RFC 6455 §8.1: a text message
    fails as soon as this is false)."""
    for completion in _COMPLETIONS:
        try:
            (prefix + completion).decode("utf-8")
        except UnicodeDecodeError:
            continue
        return True
    return False


def nesting_levels(value: Any, cap: int) -> int:
    """How many levels of lists and dicts ``value`` has (a scalar has 0), counted up to
    ``cap + 1``: the recursion never goes deeper than that, whatever the input."""
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return 0
    if cap <= 0:
        return 1
    return 1 + max((nesting_levels(child, cap - 1) for child in children), default=0)


def _same_leaf(a: Any, b: Any) -> bool:
    if isinstance(a, float):
        # -0.0 == 0.0 and nan != nan: compare what a float is, its sign included
        return math.copysign(1.0, a) == math.copysign(1.0, b) and (
            a == b or (math.isnan(a) and math.isnan(b))
        )
    return bool(a == b)


def same_value(a: Any, b: Any) -> bool:
    """Whether two decoded values are the same: equal types at every level (``1``, ``1.0``
    and ``True`` differ), dict keys in the same order, floats equal bit for bit in meaning.
    Iterative, so decoded values of any depth compare without exhausting the stack."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, dict):
            if list(x) != list(y):
                return False
            stack.extend(zip(x.values(), y.values(), strict=True))
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif not _same_leaf(x, y):
            return False
    return True
