"""The codec the rest of the package uses: the Rust extension, or its pure-Python twin.

``WSE_FAST_PURE=1`` in the environment selects the pure-Python path (the test suite runs on
both). Without it the extension is required: a missing extension is an install problem and
is reported as one instead of silently running several times slower.
"""

from __future__ import annotations

import os

if os.environ.get("WSE_FAST_PURE") == "1":
    from . import _pure as _impl

    IMPLEMENTATION = "python"
else:
    from . import _codec as _impl  # type: ignore[no-redef]

    IMPLEMENTATION = "rust"

EnvelopeError = _impl.EnvelopeError
Utf8Validator = _impl.Utf8Validator
build_frame = _impl.build_frame
mask = _impl.mask
mask_inplace = _impl.mask_inplace
pack_json = _impl.pack_json
pack_json_frame = _impl.pack_json_frame
pack_msgpack = _impl.pack_msgpack
pack_msgpack_frame = _impl.pack_msgpack_frame
parse_frame_header = _impl.parse_frame_header
random_mask_key = _impl.random_mask_key
send_to_all = _impl.send_to_all
unpack_json = _impl.unpack_json
unpack_msgpack = _impl.unpack_msgpack
validate_utf8 = _impl.validate_utf8

__all__ = [
    "IMPLEMENTATION",
    "EnvelopeError",
    "Utf8Validator",
    "build_frame",
    "mask",
    "mask_inplace",
    "pack_json",
    "pack_json_frame",
    "pack_msgpack",
    "pack_msgpack_frame",
    "parse_frame_header",
    "random_mask_key",
    "send_to_all",
    "unpack_json",
    "unpack_msgpack",
    "validate_utf8",
]
