"""The codec the rest of the package uses: the Rust extension, or its pure-Python twin.

``WSE_FAST_PURE=1`` in the environment selects the pure-Python path (the test suite runs on
both). Without it the extension is required: a missing extension is an install problem and
is reported as one instead of silently running several times slower.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

#: The codec's Python surface: what the extension ``_codec`` and its twin ``_pure`` both
#: provide, and what this module re-exports. tests/test_codec.py checks that the extension,
#: the twin and the type stub ``_codec.pyi`` each define exactly these names.
EXPORTS = (
    "CallAnswerer",
    "EnvelopeError",
    "FrameReader",
    "Utf8Validator",
    "build_frame",
    "mask",
    "pack_json",
    "pack_json_frame",
    "pack_msgpack",
    "pack_msgpack_frame",
    "parse_frame_header",
    "send_each",
    "send_to_all",
    "unpack_json",
    "unpack_msgpack",
    "validate_utf8",
)

if TYPE_CHECKING:
    # The stub's public names are EXPORTS (checked by the test above), typed as the
    # extension's: callers are type-checked against the stub on either path.
    from ._codec import *  # noqa: F403

if os.environ.get("WSE_FAST_PURE") == "1":
    from . import _pure as _impl

    IMPLEMENTATION = "python"
else:
    from . import _codec as _impl  # type: ignore[no-redef]

    IMPLEMENTATION = "rust"

# Plain module attributes, as if assigned one by one: ``codec.build_frame`` costs one
# module attribute lookup, as before.
globals().update({name: getattr(_impl, name) for name in EXPORTS})

__all__ = ["IMPLEMENTATION", *EXPORTS]
