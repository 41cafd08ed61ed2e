//! RFC 6455 §5.3 masking: XOR with a 4-byte key, eight bytes at a time.
//!
//! Chunks are multiples of four bytes, so the key phase never changes inside the wide loop and
//! only the tail needs byte-wise work. LLVM turns the 32-byte loop into SIMD on x86-64.

use std::cell::RefCell;

/// The key rotated so that its first byte is the one applied at `phase`.
#[inline]
fn rotated(key: [u8; 4], phase: usize) -> [u8; 4] {
    let mut k = key;
    k.rotate_left(phase % 4);
    k
}

#[inline]
fn wide(key: [u8; 4]) -> u64 {
    u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ])
}

/// Masks `data` in place, starting at byte `phase` of the key.
pub fn mask_in_place(data: &mut [u8], key: [u8; 4], phase: usize) {
    let k = rotated(key, phase);
    let k8 = wide(k);
    let mut chunks = data.chunks_exact_mut(32);
    for chunk in &mut chunks {
        for word in chunk.chunks_exact_mut(8) {
            let v = u64::from_ne_bytes(word.try_into().unwrap()) ^ k8;
            word.copy_from_slice(&v.to_ne_bytes());
        }
    }
    let rest = chunks.into_remainder();
    let mut words = rest.chunks_exact_mut(8);
    for word in &mut words {
        let v = u64::from_ne_bytes(word.try_into().unwrap()) ^ k8;
        word.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= k[i & 3];
    }
}

/// Masks `src` into `dst` (same length) in one pass, starting at byte `phase` of the key.
pub fn mask_into(src: &[u8], dst: &mut [u8], key: [u8; 4], phase: usize) {
    debug_assert_eq!(src.len(), dst.len());
    let k = rotated(key, phase);
    let k8 = wide(k);
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (dw, sw) in (&mut d).zip(&mut s) {
        let v = u64::from_ne_bytes(sw.try_into().unwrap()) ^ k8;
        dw.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, (db, sb)) in d.into_remainder().iter_mut().zip(s.remainder()).enumerate() {
        *db = *sb ^ k[i & 3];
    }
}

const POOL_KEYS: usize = 1024;

thread_local! {
    // Keys are drawn from the OS CSPRNG in batches: one getrandom(2) per 1024 frames instead of
    // one per frame, and each key is still unpredictable (RFC 6455 §5.3).
    static POOL: RefCell<([u8; POOL_KEYS * 4], usize)> = const { RefCell::new(([0; POOL_KEYS * 4], POOL_KEYS)) };
}

/// A fresh masking key from the operating system's CSPRNG.
pub fn random_key() -> [u8; 4] {
    POOL.with(|cell| {
        let mut pool = cell.borrow_mut();
        if pool.1 == POOL_KEYS {
            getrandom::fill(&mut pool.0).expect("the OS CSPRNG is unavailable");
            pool.1 = 0;
        }
        let i = pool.1 * 4;
        pool.1 += 1;
        [pool.0[i], pool.0[i + 1], pool.0[i + 2], pool.0[i + 3]]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(data: &[u8], key: [u8; 4], phase: usize) -> Vec<u8> {
        data.iter()
            .enumerate()
            .map(|(i, b)| b ^ key[(i + phase) % 4])
            .collect()
    }

    #[test]
    fn both_variants_match_the_definition() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in 0..100 {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            for phase in 0..4 {
                let expected = naive(&data, key, phase);
                let mut inplace = data.clone();
                mask_in_place(&mut inplace, key, phase);
                assert_eq!(inplace, expected);
                let mut out = vec![0; len];
                mask_into(&data, &mut out, key, phase);
                assert_eq!(out, expected);
            }
        }
    }

    #[test]
    fn keys_differ() {
        let a = random_key();
        let b = random_key();
        let c = random_key();
        assert!(a != b || b != c);
    }
}
