//! AES-128 of many 64-bit values at once: the pseudo-random function the
//! keyed chunker (`keyed_cdc`) applies to the window hash of every
//! position. Each value `x` is encrypted as the block `x (u64 LE) || 0^64`
//! and the result is the block's first 8 bytes as a u64 LE.
//!
//! One AES call per byte of a stream is the cost of that chunker, so the
//! batch uses VAES on 512-bit registers (four blocks per instruction) where
//! the CPU has it, and the `aes` crate (AES-NI, eight blocks in flight, or
//! its constant-time software fallback) elsewhere. Both give the same bits;
//! a test holds them to each other.

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use aes::Aes128;

/// Blocks encrypted per call of the portable path.
const PORTABLE_BATCH: usize = 32;

pub(crate) struct AesBatch {
    portable: Aes128,
    #[cfg(target_arch = "x86_64")]
    vaes: Option<vaes::RoundKeys>,
}

impl AesBatch {
    pub(super) fn new(key: &[u8; 16]) -> AesBatch {
        AesBatch {
            portable: Aes128::new(GenericArray::from_slice(key)),
            #[cfg(target_arch = "x86_64")]
            vaes: vaes::RoundKeys::new(key),
        }
    }

    /// `out[i]` = the low half of AES-128(`values[i]` || 0); the slices
    /// have the same length.
    pub(super) fn low_halves(&self, values: &[u64], out: &mut [u64]) {
        assert_eq!(values.len(), out.len());
        #[cfg(target_arch = "x86_64")]
        if let Some(keys) = &self.vaes {
            return keys.low_halves(values, out);
        }
        self.portable_low_halves(values, out);
    }

    fn portable_low_halves(&self, values: &[u64], out: &mut [u64]) {
        let mut blocks = [GenericArray::default(); PORTABLE_BATCH];
        for (vs, os) in values.chunks(PORTABLE_BATCH).zip(out.chunks_mut(PORTABLE_BATCH)) {
            for (b, v) in blocks.iter_mut().zip(vs) {
                *b = u128::from(*v).to_le_bytes().into();
            }
            self.portable.encrypt_blocks(&mut blocks[..vs.len()]);
            for (o, b) in os.iter_mut().zip(&blocks) {
                *o = u64::from_le_bytes(b[..8].try_into().expect("16-byte block"));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vaes {
    use std::arch::x86_64::*;

    /// AES-128's eleven round keys, expanded once; wiped when dropped.
    pub(super) struct RoundKeys(zeroize::Zeroizing<[[u8; 16]; 11]>);

    impl RoundKeys {
        /// `None` where the CPU lacks AVX-512 or VAES.
        pub(super) fn new(key: &[u8; 16]) -> Option<RoundKeys> {
            let usable = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("vaes")
                && is_x86_feature_detected!("aes");
            // SAFETY: the CPU has AES-NI (checked just above).
            usable.then(|| RoundKeys(zeroize::Zeroizing::new(unsafe { expand(key) })))
        }

        pub(super) fn low_halves(&self, values: &[u64], out: &mut [u64]) {
            // SAFETY: `new` returned `Some` only on a CPU with AVX-512F,
            // VAES and AES-NI, the features `encrypt` is compiled for.
            unsafe { encrypt(&self.0, values, out) }
        }
    }

    /// The AES-128 key schedule (FIPS-197 5.2) with AESKEYGENASSIST.
    #[target_feature(enable = "aes")]
    fn expand(key: &[u8; 16]) -> [[u8; 16]; 11] {
        let next = |k: __m128i, assist: __m128i| {
            let mut k = k;
            k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
            k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
            k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
            _mm_xor_si128(k, _mm_shuffle_epi32::<0xff>(assist))
        };
        let mut rk = [_mm_setzero_si128(); 11];
        // SAFETY: an unaligned load of the 16 bytes of `key`.
        rk[0] = unsafe { _mm_loadu_si128(key.as_ptr().cast()) };
        macro_rules! round {
            ($($i:literal: $rcon:literal),*) => {$(
                rk[$i] = next(rk[$i - 1], _mm_aeskeygenassist_si128::<$rcon>(rk[$i - 1]));
            )*};
        }
        round!(1: 0x01, 2: 0x02, 3: 0x04, 4: 0x08, 5: 0x10, 6: 0x20, 7: 0x40, 8: 0x80, 9: 0x1b, 10: 0x36);
        let mut out = [[0u8; 16]; 11];
        for (o, k) in out.iter_mut().zip(&rk) {
            // SAFETY: an unaligned store into the 16 bytes of `o`.
            unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), *k) };
        }
        out
    }

    /// Four values to a 512-bit register (each zero-extended to a block),
    /// eight registers in flight so the AES units never wait.
    #[target_feature(enable = "avx512f,vaes,aes")]
    fn encrypt(round_keys: &[[u8; 16]; 11], values: &[u64], out: &mut [u64]) {
        // SAFETY: unaligned loads of 16 bytes each.
        let k: [__m512i; 11] = std::array::from_fn(|i| {
            _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(round_keys[i].as_ptr().cast()) })
        });
        let load = |at: usize| {
            // SAFETY: callers keep at + 4 <= values.len().
            let v = unsafe { _mm256_loadu_si256(values.as_ptr().add(at).cast()) };
            // Lanes 0, 2, 4, 6 take the values: each block is x || 0.
            _mm512_xor_si512(_mm512_maskz_expand_epi64(0x55, _mm512_castsi256_si512(v)), k[0])
        };
        let store = |out: &mut [u64], at: usize, r: __m512i| {
            let low = _mm512_maskz_compress_epi64(0x55, _mm512_aesenclast_epi128(r, k[10]));
            // SAFETY: callers keep at + 4 <= out.len().
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(at).cast(), _mm512_castsi512_si256(low)) };
        };
        let mut at = 0;
        // A fixed eight registers, so they stay registers.
        while at + 32 <= values.len() {
            let mut b: [__m512i; 8] = std::array::from_fn(|j| load(at + 4 * j));
            for key in &k[1..10] {
                for r in &mut b {
                    *r = _mm512_aesenc_epi128(*r, *key);
                }
            }
            for (j, r) in b.into_iter().enumerate() {
                store(out, at + 4 * j, r);
            }
            at += 32;
        }
        while at + 4 <= values.len() {
            let mut r = load(at);
            for key in &k[1..10] {
                r = _mm512_aesenc_epi128(r, *key);
            }
            store(out, at, r);
            at += 4;
        }
        if at < values.len() {
            let mut v = [0u64; 4];
            let mut o = [0u64; 4];
            let rest = values.len() - at;
            v[..rest].copy_from_slice(&values[at..]);
            encrypt(round_keys, &v, &mut o);
            out[at..].copy_from_slice(&o[..rest]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS-197 appendix C.1 through the batch, both paths: the
    /// plaintext's high half is not zero there, so the vector checks the
    /// key schedule and the portable path; the paths are then held to
    /// each other on values with a zero high half.
    #[test]
    fn both_paths_give_aes_128() {
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let batch = AesBatch::new(&key);
        let mut block = GenericArray::from(std::array::from_fn::<u8, 16, _>(|i| (i as u8) * 0x11));
        batch.portable.encrypt_block(&mut block);
        assert_eq!(
            block.as_slice(),
            [
                0x69, 0xc4, 0xe0, 0xd8, 0x6a, 0x7b, 0x04, 0x30, 0xd8, 0xcd, 0xb7, 0x80, 0x70, 0xb4, 0xc5,
                0x5a
            ]
        );
        let values: Vec<u64> = (0..1003u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let mut portable = vec![0; values.len()];
        batch.portable_low_halves(&values, &mut portable);
        let mut chosen = vec![0; values.len()];
        batch.low_halves(&values, &mut chosen);
        assert_eq!(portable, chosen);
        #[cfg(target_arch = "x86_64")]
        if batch.vaes.is_none() {
            eprintln!("note: no AVX-512 VAES on this CPU; only the portable path ran");
        }
        for (v, o) in values.iter().zip(&portable).take(5) {
            let mut b = GenericArray::from(u128::from(*v).to_le_bytes());
            batch.portable.encrypt_block(&mut b);
            assert_eq!(*o, u64::from_le_bytes(b[..8].try_into().unwrap()));
        }
    }
}
