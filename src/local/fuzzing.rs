//! **For fuzzing only; not part of the API.** Hooks that let the fuzz
//! targets in `fuzz/` and the property tests reach the crate-private frame
//! decoding. Nothing here is stable; do not use it in programs.
//!
//! **Owns:** nothing but these entry points. **Must not touch:** any state.

use super::frame::{self, FrameReader, FromInstance, ToInstance, ToPrimary, ToSecondary};

/// Decodes `body` as every message type; must never panic.
pub fn fuzz_only_decode_every_frame_type(body: &[u8]) {
    let _ = frame::decode::<ToPrimary<'_>>(body);
    let _ = frame::decode::<ToSecondary<'_>>(body);
    let _ = frame::decode::<ToInstance<'_>>(body);
    let _ = frame::decode::<FromInstance<'_>>(body);
}

/// Feeds `stream` to the incremental reader in chunks of the given sizes
/// (cycled; a size of 0 counts as 1), checking its invariants: it never takes
/// a byte past the end of a frame, its buffer never exceeds the announced
/// length nor `max(4 KiB, 2 x received)`, and a complete frame's body is
/// exactly the announced bytes. Returns the bodies of the complete frames.
/// Panics (for the fuzzer to report) if an invariant breaks.
pub fn fuzz_only_read_frames_in_chunks(stream: &[u8], chunks: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut reader = FrameReader::new();
    let mut pos = 0;
    let mut received_in_frame = 0usize;
    let mut sizes = chunks.iter().cycle();
    while pos < stream.len() {
        let size = usize::from(sizes.next().copied().unwrap_or(1)).max(1);
        let end = (pos + size).min(stream.len());
        let used = match reader.push(&stream[pos..end]) {
            Ok(used) => used,
            Err(_) => {
                assert!(reader.capacity() == 0, "an oversized header allocated");
                return frames;
            }
        };
        let offered = end - pos;
        assert!(used <= offered);
        assert!(
            reader.is_complete() || used == offered,
            "an incomplete frame left offered bytes unread"
        );
        received_in_frame += used;
        assert!(
            reader.capacity() <= (2 * received_in_frame).max(4096),
            "buffer {} for {} received bytes",
            reader.capacity(),
            received_in_frame
        );
        assert!(reader.capacity() <= super::MAX_FRAME);
        pos += used;
        if reader.is_complete() {
            let declared = u32::from_be_bytes(
                stream[pos - received_in_frame..pos - received_in_frame + 4]
                    .try_into()
                    .expect("four header bytes"),
            ) as usize;
            let done = std::mem::replace(&mut reader, FrameReader::new());
            let body = done.into_body();
            assert_eq!(body.len(), declared);
            assert_eq!(body, &stream[pos - declared..pos]);
            fuzz_only_decode_every_frame_type(&body);
            frames.push(body);
            received_in_frame = 0;
        }
    }
    frames
}
