"""Placeholder demo: the codec's round trip (replaced by the WSE demo once the server exists)."""

from wse_fast import codec

frame = codec.pack_json_frame("hello", {"message": "Hello server!"}, None, mask=True)
head = codec.parse_frame_header(frame)
assert head is not None
fin, rsv, opcode, key, length, hlen = head
body = codec.mask(frame[hlen:], key) if key else frame[hlen:]
print(f"codec={codec.IMPLEMENTATION} frame={len(frame)}B opcode={opcode} masked={key is not None}")
print("round trip:", codec.unpack_json(body))
