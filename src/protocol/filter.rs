//! The compact set of ids an instance has heard from, sent in its settling
//! announcements so that those peers do not answer again (and the others
//! do).
//!
//! **Owns:** the filter's encoding and the membership test. **Must not
//! touch:** anything else; it is a pure function of ids.
//!
//! Up to [`EXACT_UP_TO`] ids, the filter is exact: a tag byte, then 4-byte
//! hashes of the ids (a false positive needs a 32-bit collision). Beyond, it
//! is a Bloom filter of about 10 bits and 7 probes per id, at most
//! [`MAX_FILTER`] bytes (about 1% false positives at 800 ids, 2% at 1,000).
//! A false positive costs little: that peer stays silent, and the newcomer
//! learns it from its next announcement. A false negative cannot happen. The
//! filter is public and unauthenticated in open mode, so a forger can only
//! use it to silence answers to its own announcements.

use crate::wire::Id;

/// The largest filter sent, in bytes.
pub const MAX_FILTER: usize = 1024;

/// The most ids sent as an exact list.
pub const EXACT_UP_TO: usize = 250;

const TAG_EXACT: u8 = 1;
const TAG_BLOOM: u8 = 2;
const PROBES: u32 = 7;

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn positions(id: Id, bits: u64) -> impl Iterator<Item = u64> {
    let h1 = mix(id);
    let h2 = mix(h1) | 1;
    (0..u64::from(PROBES)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
}

fn short(id: Id) -> [u8; 4] {
    (mix(id) as u32).to_le_bytes()
}

/// A filter holding `ids` (`count` of them). No ids: a filter that holds
/// nothing (one tag byte, never empty: an empty filter means "none").
pub(crate) fn build(ids: impl Iterator<Item = Id>, count: usize) -> Vec<u8> {
    if count <= EXACT_UP_TO {
        let mut filter = Vec::with_capacity(1 + 4 * count);
        filter.push(TAG_EXACT);
        for id in ids.take(EXACT_UP_TO) {
            filter.extend_from_slice(&short(id));
        }
        return filter;
    }
    let len = count
        .saturating_mul(10)
        .div_ceil(8)
        .clamp(8, MAX_FILTER - 1);
    let mut filter = vec![0u8; 1 + len];
    filter[0] = TAG_BLOOM;
    let bits = (len * 8) as u64;
    for id in ids {
        for at in positions(id, bits) {
            filter[1 + (at / 8) as usize] |= 1 << (at % 8);
        }
    }
    filter
}

/// Whether `id` may be in `filter`. An empty, unknown or absurd filter holds
/// nothing.
pub(crate) fn contains(filter: &[u8], id: Id) -> bool {
    if filter.len() > MAX_FILTER {
        return false;
    }
    match filter.split_first() {
        Some((&TAG_EXACT, list)) => {
            let wanted = short(id);
            list.chunks_exact(4).any(|h| h == wanted)
        }
        Some((&TAG_BLOOM, bloom)) if !bloom.is_empty() => {
            let bits = (bloom.len() * 8) as u64;
            positions(id, bits).all(|at| bloom[(at / 8) as usize] & (1 << (at % 8)) != 0)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> Vec<Id> {
        (0..n).map(|i| mix(i + 1)).collect()
    }

    #[test]
    fn a_small_set_is_exact() {
        let ids = ids(EXACT_UP_TO as u64);
        let filter = build(ids.iter().copied(), ids.len());
        assert_eq!(filter.len(), 1 + 4 * EXACT_UP_TO);
        assert!(ids.iter().all(|&id| contains(&filter, id)));
        assert!(!(10_000..110_000u64).any(|x| contains(&filter, mix(x))));
    }

    #[test]
    fn a_large_set_is_a_bloom_filter_with_few_false_positives() {
        let ids = ids(800);
        let filter = build(ids.iter().copied(), ids.len());
        assert!(filter.len() <= MAX_FILTER);
        assert!(ids.iter().all(|&id| contains(&filter, id)));
        let false_positives = (10_000..20_000u64)
            .filter(|&x| contains(&filter, mix(x)))
            .count();
        assert!(false_positives < 200, "{false_positives} of 10,000");
    }

    #[test]
    fn no_ids_and_garbage_hold_nothing() {
        assert!(!contains(&[], 7));
        let none = build(std::iter::empty(), 0);
        assert!(!none.is_empty() && !contains(&none, 7));
        assert!(!contains(&[9, 1, 2, 3, 4], 7));
        assert!(!contains(&[TAG_BLOOM], 7));
    }
}
