//! The properties the `local_frame` fuzz target checks, as a short, seeded,
//! stable-toolchain test: decoding any bytes as any `cohort::local` message
//! never panics, and the incremental frame reader fed any byte stream in any
//! chunking never over-allocates, never reads past a frame, and yields
//! exactly the announced bodies. Also replays the committed fuzz corpus.
//!
//! Run: `scripts/isolated cargo test --offline --test local_frame_props`.

use cohort::local::fuzzing::{fuzz_only_decode_every_frame_type, fuzz_only_read_frames_in_chunks};

/// xorshift64*: reproducible inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A stream of frames: mostly well-formed lengths with random bodies, some
/// with random or huge lengths, some cut short.
fn stream(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(6) {
        let body_len = match rng.below(10) {
            0 => rng.below(u64::from(u32::MAX)) as usize, // usually oversized
            1 => 1 << 20,                                 // exactly the cap, cut short
            _ => rng.below(300) as usize,
        };
        out.extend_from_slice(&(body_len as u32).to_be_bytes());
        let mut body = rng.bytes(body_len.min(300));
        if !body.is_empty() && rng.below(2) == 0 {
            body[0] = 1; // the version byte, so decoding goes deeper
        }
        out.extend_from_slice(&body);
    }
    out
}

#[test]
fn seeded_random_streams_in_random_chunks_keep_every_reader_invariant() {
    let mut rng = Rng(0x5eed_c0ff_ee15_600d);
    for _ in 0..20_000 {
        let stream = stream(&mut rng);
        let n = rng.below(8) as usize;
        let chunks = rng.bytes(n);
        fuzz_only_decode_every_frame_type(&stream);
        fuzz_only_read_frames_in_chunks(&stream, &chunks);
    }
}

#[test]
fn every_short_body_decodes_without_panicking() {
    for a in 0..=255u8 {
        for b in 0..=255u8 {
            fuzz_only_decode_every_frame_type(&[1, a, b]);
            fuzz_only_decode_every_frame_type(&[1, a, b, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        }
    }
}

#[test]
fn the_committed_fuzz_corpus_replays_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/local_frame");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        // The fuzz target's layout: n, n chunk sizes, the stream.
        let Some((&k, rest)) = data.split_first() else {
            continue;
        };
        let (chunks, stream) = rest.split_at(usize::from(k).min(rest.len()));
        fuzz_only_decode_every_frame_type(stream);
        fuzz_only_read_frames_in_chunks(stream, chunks);
        n += 1;
    }
    assert!(n > 0, "the corpus in {} is empty", dir.display());
}
