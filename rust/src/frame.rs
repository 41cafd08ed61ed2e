//! RFC 6455 §5.2 frame headers.

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;

/// Bytes a header takes for a payload of `len` bytes.
pub fn header_len(len: usize, masked: bool) -> usize {
    let base = if len < 126 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    };
    if masked {
        base + 4
    } else {
        base
    }
}

/// Writes a header at the start of `out` and returns its length.
pub fn write_header(
    out: &mut [u8],
    fin: bool,
    rsv: u8,
    opcode: u8,
    len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = ((fin as u8) << 7) | ((rsv & 0x7) << 4) | (opcode & 0x0F);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut at = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if len <= 0xFFFF {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[at..at + 4].copy_from_slice(&key);
        at += 4;
    }
    at
}

/// A parsed header.
pub struct Header {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    pub header_len: usize,
}

/// Parses the header at the start of `data`: Ok(None) when more bytes are needed, Err for a
/// length encoding that RFC 6455 forbids.
pub fn parse_header(data: &[u8]) -> Result<Option<Header>, &'static str> {
    if data.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (data[0], data[1]);
    let masked = b1 & 0x80 != 0;
    let flag = (b1 & 0x7F) as usize;
    let (payload_len, mut at) = match flag {
        126 => {
            if data.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([data[2], data[3]]) as u64, 4)
        }
        127 => {
            if data.len() < 10 {
                return Ok(None);
            }
            let n = u64::from_be_bytes(data[2..10].try_into().unwrap());
            if n >> 63 != 0 {
                return Err("the most significant bit of a 64-bit length must be 0");
            }
            (n, 10)
        }
        n => (n as u64, 2),
    };
    let mask = if masked {
        if data.len() < at + 4 {
            return Ok(None);
        }
        let key = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        at += 4;
        Some(key)
    } else {
        None
    };
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode: b0 & 0x0F,
        mask,
        payload_len,
        header_len: at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_at_each_length_class() {
        for len in [0usize, 125, 126, 65535, 65536, 1 << 20] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut buf = [0u8; 14];
                let n = write_header(&mut buf, true, 0, OP_TEXT, len, mask);
                assert_eq!(n, header_len(len, mask.is_some()));
                let h = parse_header(&buf[..n]).unwrap().unwrap();
                assert_eq!(h.payload_len as usize, len);
                assert_eq!(h.header_len, n);
                assert_eq!(h.mask, mask);
                assert!(parse_header(&buf[..n - 1]).unwrap().is_none());
            }
        }
    }
}
