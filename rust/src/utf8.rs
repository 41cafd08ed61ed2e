//! UTF-8 validation of whole buffers and of a message arriving in fragments.

use simdutf8::compat::from_utf8;

pub fn is_valid(data: &[u8]) -> bool {
    simdutf8::basic::from_utf8(data).is_ok()
}

/// Length of the sequence a lead byte starts, or 0 for a byte that cannot lead.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7F => 1,
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

/// Validates one message fed in pieces.
///
/// Only an incomplete trailing sequence (at most 3 bytes) is kept between pieces, so memory
/// stays constant whatever the message size.
#[derive(Default)]
pub struct Incremental {
    pending: [u8; 4],
    pending_len: usize,
    failed: bool,
}

impl Incremental {
    /// Feeds the next piece; false as soon as the bytes so far cannot begin valid UTF-8.
    pub fn feed(&mut self, mut data: &[u8]) -> bool {
        if self.failed {
            return false;
        }
        if self.pending_len > 0 {
            let need = sequence_len(self.pending[0]);
            let take = (need - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            match from_utf8(&self.pending[..self.pending_len]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_none() => return true, // still incomplete, data empty
                Err(_) => return self.fail(),
            }
        }
        match from_utf8(data) {
            Ok(_) => true,
            Err(e) => match e.error_len() {
                None => {
                    let tail = &data[e.valid_up_to()..];
                    self.pending[..tail.len()].copy_from_slice(tail);
                    self.pending_len = tail.len();
                    true
                }
                Some(_) => self.fail(),
            },
        }
    }

    /// True if everything fed was valid and no sequence is left unfinished.
    pub fn finish(&self) -> bool {
        !self.failed && self.pending_len == 0
    }

    pub fn reset(&mut self) {
        *self = Self::default();
    }

    fn fail(&mut self) -> bool {
        self.failed = true;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_split_of_valid_text_passes() {
        let text = "aé€😀z".as_bytes();
        for cut in 0..=text.len() {
            let mut v = Incremental::default();
            assert!(v.feed(&text[..cut]));
            assert!(v.feed(&text[cut..]));
            assert!(v.finish());
        }
    }

    #[test]
    fn invalid_is_reported_early_and_truncation_at_the_end() {
        let mut v = Incremental::default();
        assert!(v.feed(&[0xE0]));
        assert!(!v.feed(&[0x80])); // overlong lead
        let mut v = Incremental::default();
        assert!(v.feed(&[0xF0, 0x9F]));
        assert!(!v.finish());
        let mut v = Incremental::default();
        assert!(!v.feed(&[0xED, 0xA0, 0x80])); // surrogate
    }
}
