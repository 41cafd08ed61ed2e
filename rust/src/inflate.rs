//! permessage-deflate inflation (RFC 7692 §7.2.2), bounded: what `Inflater` in
//! `python/wse_fast/sansio/deflate.py` does with Python's zlib, here with zlib-rs (a Rust
//! port of zlib, so that a window agreed below 15 bits refuses a distance past it as zlib
//! does). `FrameReader` in `python/wse_fast/_pure.py` is the reference.

use flate2::{Decompress, FlushDecompress, Status};

/// What a sync flush ends with and RFC 7692 §7.2.1 strips from every compressed message;
/// the receiver appends it again before inflating (§7.2.2).
pub const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Output is made in steps of at most this many bytes, so that what is allocated past what
/// the limit allows stays small. The pure twin asks Python's zlib for output in the same
/// steps, each within CPython's first output block (32 KiB), so that each is one `inflate`
/// call there as here: a distance past the window is refused only across calls.
const STEP: usize = 32 * 1024;

pub enum InflateError {
    /// The message would inflate past the limit (close 1009).
    TooBig,
    /// Not valid DEFLATE data (close 1007).
    Corrupt,
}

/// One connection's inflater: a zlib context per message, or kept across messages with
/// context takeover (then bounded by the window agreed).
pub struct Inflater {
    pub window_bits: u8,
    pub takeover: bool,
    /// zlib's state, made for a message's first frame and dropped after it unless taken over.
    state: Option<Decompress>,
    /// A BFINAL block has ended the DEFLATE stream: what follows it is not inflated (as
    /// Python's zlib leaves it in `unused_data`) and the next message starts a new stream.
    ended: bool,
}

impl Inflater {
    pub fn new(window_bits: u8, takeover: bool) -> Self {
        Self {
            window_bits,
            takeover,
            state: None,
            ended: false,
        }
    }

    /// Inflates `input` onto `out`, which may hold no more than `limit` bytes: `TooBig` as
    /// soon as one byte more comes out (nothing past it is made).
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), InflateError> {
        if self.ended {
            return Ok(());
        }
        // flate2 takes 9 to 15 bits: a peer that agreed to 8 (RFC 7692 §7.1.2 allows it) is
        // inflated with a 512-byte window, which accepts every stream made within 256
        // bytes (zlib's own inflater would refuse a distance of 257 to 512 bytes).
        let bits = self.window_bits.max(9);
        let state = self
            .state
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, bits));
        let mut input = input;
        // The first step is about what the input may inflate to at a typical ratio, the next
        // ones twice the last, up to STEP: a small message costs a small buffer.
        let mut step = (input.len() * 4).clamp(256, STEP);
        loop {
            let at = out.len();
            if at > limit {
                self.state = None;
                return Err(InflateError::TooBig);
            }
            // room + 1: one byte more than allowed tells "exactly full" from "too big"
            let want = (limit - at).saturating_add(1).min(step);
            step = (step * 2).min(STEP);
            out.reserve(want);
            let (before_in, before_out) = (state.total_in(), state.total_out());
            let status = state.decompress_uninit(
                input,
                &mut out.spare_capacity_mut()[..want],
                FlushDecompress::None,
            );
            let consumed = (state.total_in() - before_in) as usize;
            let produced = (state.total_out() - before_out) as usize;
            // SAFETY: zlib has written `produced` (at most `want`, within the capacity
            // reserved) bytes from `at` on.
            unsafe { out.set_len(at + produced) };
            let status = match status {
                Ok(status) => status,
                Err(_) => {
                    self.state = None;
                    return Err(InflateError::Corrupt);
                }
            };
            input = &input[consumed..];
            if out.len() > limit {
                self.state = None;
                return Err(InflateError::TooBig);
            }
            match status {
                Status::StreamEnd => {
                    self.ended = true;
                    return Ok(());
                }
                // no progress possible: all input taken and nothing pending
                Status::BufError => return Ok(()),
                Status::Ok if consumed == 0 && produced == 0 => return Ok(()),
                Status::Ok if produced < want && input.is_empty() => return Ok(()),
                Status::Ok => {}
            }
        }
    }

    /// The message's last frame has been fed: the tail (§7.2.2), then the context dropped
    /// unless it is taken over to the next message (and the stream has not ended).
    pub fn end(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        self.feed(&SYNC_TAIL, out, limit)?;
        if !self.takeover || self.ended {
            self.state = None;
        }
        self.ended = false;
        Ok(())
    }

    /// Forgets a message cut short (the connection is failing).
    pub fn reset(&mut self) {
        self.state = None;
        self.ended = false;
    }
}
