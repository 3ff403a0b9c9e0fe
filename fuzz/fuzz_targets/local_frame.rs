//! `cohort::local` frames from a hostile peer: decoding every message type
//! never panics, and the incremental reader, fed the same bytes in arbitrary
//! chunks, never over-allocates, never reads past a frame, and yields exactly
//! the announced bodies.
//!
//! Input layout: byte 0 = how many chunk sizes follow (n), bytes 1..=n = the
//! chunk sizes, the rest = the byte stream a peer sent.
#![no_main]

use cohort::local::fuzzing::{fuzz_only_decode_every_frame_type, fuzz_only_read_frames_in_chunks};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (chunks, stream) = rest.split_at(n);
    fuzz_only_decode_every_frame_type(stream);
    fuzz_only_read_frames_in_chunks(stream, chunks);
});
