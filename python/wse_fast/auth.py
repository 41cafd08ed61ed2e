"""Deprecated name of :mod:`wse_fast.hmac_challenge`, the HMAC-SHA256 challenge-response helper.

``auth`` beside :mod:`wse_fast.authentication` (the server's own identify and challenge flow)
read as two halves of one thing; the helper is now named for what it is. This module stays
for one release so that ``from wse_fast.auth import HmacChallenge`` keeps working, with a
DeprecationWarning when it is first imported.
"""

from __future__ import annotations

import warnings

from .hmac_challenge import ALG, HmacChallenge, Solver, hmac_answer, hmac_solver

__all__ = ["ALG", "HmacChallenge", "Solver", "hmac_answer", "hmac_solver"]

warnings.warn(
    "wse_fast.auth is now wse_fast.hmac_challenge (the names are the same)",
    DeprecationWarning,
    stacklevel=2,
)
