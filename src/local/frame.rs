//! Length-prefixed, versioned frames exchanged on every `cohort::local` socket.
//!
//! **Owns:** the byte format of every message (secondary <-> primary, asker <->
//! instance), the incremental [`FrameReader`] and decoding of untrusted bytes.
//! **Must not touch:** sockets' lifetimes, deadlines, election or any state:
//! callers decide what a message means.
//!
//! A frame is a 4-byte big-endian length `L` followed by `L` bytes: one version
//! byte ([`VERSION`]) and a postcard body. `L` never exceeds [`MAX_FRAME`]. The
//! reader never allocates the announced length up front: its buffer grows with
//! the bytes that actually arrive (at most twice what arrived, at least 4 KiB,
//! never past `L`), so a peer that announces 1 MiB and sends one byte costs
//! 4 KiB. Bodies borrow their byte strings from the frame buffer, so decoding
//! copies nothing and serde's capped pre-allocation is the only other
//! allocation. Anything that is not exactly one well-formed message of this
//! version is a typed [`FrameError`]; decoding never panics.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::identity::ProcessIdentity;

/// The protocol version carried in the first byte of every frame body.
pub(crate) const VERSION: u8 = 1;

/// The largest frame (version byte plus body) either side sends or accepts: 1 MiB.
pub const MAX_FRAME: usize = 1 << 20;

/// Why a frame from the other process was rejected.
///
/// Any of these closes only the connection it arrived on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer announced a frame larger than [`MAX_FRAME`]; nothing was read or allocated.
    #[error(
        "frame of {len} bytes exceeds the {max}-byte limit; the peer is not a cohort::local peer or is misbehaving"
    )]
    Oversized {
        /// The announced length.
        len: u64,
        /// The limit, [`MAX_FRAME`].
        max: usize,
    },
    /// The frame carries a protocol version this build does not speak.
    #[error(
        "frame has protocol version {found}, this build speaks {expected}; run the same cohort version on both sides"
    )]
    UnknownVersion {
        /// The version byte received.
        found: u8,
        /// The version this build speaks.
        expected: u8,
    },
    /// The frame has no version byte at all.
    #[error("empty frame (no version byte); the peer is not a cohort::local peer")]
    Empty,
    /// The body is not a valid message.
    #[error("malformed frame body; the peer is not a cohort::local peer or is corrupt")]
    Malformed(#[source] postcard::Error),
    /// A valid message was followed by extra bytes.
    #[error("{extra} unexpected bytes after the message; the peer is not a cohort::local peer")]
    TrailingBytes {
        /// How many bytes followed the message.
        extra: usize,
    },
    /// A well-formed message arrived where the protocol does not allow it.
    #[error("unexpected message: {0}; the peer does not follow the cohort::local protocol")]
    Unexpected(&'static str),
    /// The connection ended in the middle of a frame.
    #[error("the connection ended inside a frame (truncated frame)")]
    Truncated,
    /// The connection ended cleanly before a frame started.
    #[error("the peer closed the connection")]
    Closed,
    /// Reading or writing the socket failed.
    #[error("socket I/O failed while exchanging a frame")]
    Io(#[source] std::io::Error),
}

/// What a secondary sends to the primary: the first and only frame on a connection.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) enum ToPrimary<'a> {
    /// Forward a request and wait for the reply.
    #[serde(borrow)]
    Request(WireRequest<'a>),
    /// Keep the connection open until the primary exits (used by `acquire_or_wait`).
    Watch,
    /// Prove who you are: answer with [`ToSecondary::Identity`] carrying this nonce.
    Challenge {
        /// Fresh random bytes chosen by the asker.
        nonce: [u8; 16],
    },
    /// Stop accepting and exit (see `InstanceHandle::shutdown`).
    Shutdown,
}

/// A forwarded request as it travels; every string is raw bytes.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct WireRequest<'a> {
    #[serde(borrow)]
    pub args: Vec<&'a [u8]>,
    #[serde(borrow)]
    pub cwd: Option<&'a [u8]>,
    #[serde(borrow)]
    pub env: Vec<(&'a [u8], &'a [u8])>,
    #[serde(borrow)]
    pub payload: Option<&'a [u8]>,
}

/// What the primary sends to a secondary.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) enum ToSecondary<'a> {
    /// First frame on every accepted connection: whether requests are accepted.
    Hello {
        /// False while the primary is shutting down.
        accepting: bool,
    },
    /// The answer to a request.
    Reply {
        /// Exit-status-like code chosen by the primary.
        status: i32,
        /// Optional postcard-encoded payload.
        #[serde(borrow)]
        payload: Option<&'a [u8]>,
    },
    /// The request was not answered.
    Refused {
        /// True when the primary is shutting down; false when it dropped the request.
        shutting_down: bool,
    },
    /// The answer to a [`ToPrimary::Challenge`].
    Identity {
        /// The nonce of the challenge.
        nonce: [u8; 16],
        /// Who the primary says it is (checked against the kernel's view).
        identity: ProcessIdentity,
    },
    /// The answer to [`ToPrimary::Shutdown`]: the primary stopped accepting.
    Stopping,
}

/// What an asker sends to one registered instance (see `Instances`).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) enum ToInstance<'a> {
    /// A handshake question: the application's postcard-encoded value.
    #[serde(borrow)]
    Ask(&'a [u8]),
}

/// What a registered instance answers.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) enum FromInstance<'a> {
    /// The application's postcard-encoded answer.
    #[serde(borrow)]
    Answer(&'a [u8]),
    /// The question could not be decoded as the type this instance expects.
    NotUnderstood,
}

/// Encodes `msg` as one complete frame (length prefix included).
pub(crate) fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0, 0, 0, 0, VERSION]);
    let mut out = postcard::to_extend(msg, out).map_err(EncodeError::Postcard)?;
    let len = out.len() - 4;
    if len > MAX_FRAME {
        return Err(EncodeError::TooLarge { len });
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Why a message could not be encoded.
#[derive(Debug)]
pub(crate) enum EncodeError {
    Postcard(postcard::Error),
    TooLarge { len: usize },
}

/// Decodes one frame body (version byte plus message), rejecting anything else.
pub(crate) fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, FrameError> {
    let (&version, rest) = body.split_first().ok_or(FrameError::Empty)?;
    if version != VERSION {
        return Err(FrameError::UnknownVersion {
            found: version,
            expected: VERSION,
        });
    }
    let (msg, trailing) = postcard::take_from_bytes(rest).map_err(FrameError::Malformed)?;
    if !trailing.is_empty() {
        return Err(FrameError::TrailingBytes {
            extra: trailing.len(),
        });
    }
    Ok(msg)
}

/// The smallest buffer a frame body gets once its first byte is due.
const FIRST_CHUNK: usize = 4096;

/// Reassembles one frame from bytes as they arrive, in any chunks.
///
/// Sans-IO: [`FrameReader::space`] lends the slice to read into (never past
/// the end of the current frame, so bytes of the next frame stay in the
/// socket), [`FrameReader::advance`] records what was read. Its buffer grows
/// with the bytes received, never to the announced length at once.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    header: [u8; 4],
    header_filled: usize,
    /// The announced body length, once the header is complete.
    len: Option<usize>,
    body: Vec<u8>,
    filled: usize,
}

impl FrameReader {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// True once any byte of the frame arrived.
    pub(crate) fn is_started(&self) -> bool {
        self.header_filled > 0
    }

    /// True once the whole frame arrived.
    pub(crate) fn is_complete(&self) -> bool {
        self.len == Some(self.filled)
    }

    /// The bytes to read into next: empty only when the frame is complete.
    pub(crate) fn space(&mut self) -> &mut [u8] {
        match self.len {
            None => &mut self.header[self.header_filled..],
            Some(len) => {
                if self.filled == self.body.len() && self.body.len() < len {
                    let grown = (self.filled * 2).max(FIRST_CHUNK).min(len);
                    self.body.resize(grown, 0);
                }
                &mut self.body[self.filled..]
            }
        }
    }

    /// Records that `n` bytes were written into [`FrameReader::space`].
    ///
    /// Fails with [`FrameError::Oversized`] as soon as a header announces more
    /// than [`MAX_FRAME`]; nothing is allocated for it.
    pub(crate) fn advance(&mut self, n: usize) -> Result<(), FrameError> {
        match self.len {
            None => {
                self.header_filled = (self.header_filled + n).min(4);
                if self.header_filled == 4 {
                    let len = u32::from_be_bytes(self.header) as usize;
                    if len > MAX_FRAME {
                        return Err(FrameError::Oversized {
                            len: len as u64,
                            max: MAX_FRAME,
                        });
                    }
                    self.len = Some(len);
                }
            }
            Some(len) => self.filled = (self.filled + n).min(len),
        }
        Ok(())
    }

    /// Copies as much of `input` as the current frame still needs; returns
    /// how many bytes were used.
    pub(crate) fn push(&mut self, mut input: &[u8]) -> Result<usize, FrameError> {
        let mut used = 0;
        while !self.is_complete() && !input.is_empty() {
            let space = self.space();
            let n = space.len().min(input.len());
            space[..n].copy_from_slice(&input[..n]);
            input = &input[n..];
            used += n;
            self.advance(n)?;
        }
        Ok(used)
    }

    /// The body received so far (the whole body once complete).
    #[cfg(test)]
    pub(crate) fn body(&self) -> &[u8] {
        &self.body[..self.filled]
    }

    /// The buffer's capacity: what this frame costs in memory.
    pub(crate) fn capacity(&self) -> usize {
        self.body.capacity()
    }

    /// The complete body, leaving the reader empty.
    pub(crate) fn into_body(mut self) -> Vec<u8> {
        self.body.truncate(self.filled);
        self.body
    }
}

/// Reads one frame body into `buf` (replacing its contents).
///
/// Reads exactly one frame's bytes, and grows `buf` only as bytes arrive.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    read_frame_counted(reader, buf, &std::sync::atomic::AtomicU64::new(0)).await
}

/// [`read_frame`], adding every byte read to `received`.
pub(crate) async fn read_frame_counted<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    received: &std::sync::atomic::AtomicU64,
) -> Result<(), FrameError> {
    let mut frame = FrameReader::new();
    while !frame.is_complete() {
        let n = match reader.read(frame.space()).await {
            Ok(0) if !frame.is_started() => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(FrameError::Truncated);
            }
            Err(e) => return Err(FrameError::Io(e)),
        };
        received.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        frame.advance(n)?;
    }
    *buf = frame.into_body();
    Ok(())
}

/// Writes a complete, already encoded frame.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
) -> Result<(), FrameError> {
    writer.write_all(frame).await.map_err(FrameError::Io)?;
    writer.flush().await.map_err(FrameError::Io)
}

/// Decodes an application value that must fill `bytes` exactly: postcard is
/// not self-describing, so trailing bytes are the only sign that the other
/// side used another type.
pub(crate) fn decode_exact<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, postcard::Error> {
    match postcard::take_from_bytes(bytes)? {
        (value, []) => Ok(value),
        _ => Err(postcard::Error::DeserializeBadEncoding),
    }
}

/// Decodes an optional application payload carried in a request or reply.
pub(crate) fn decode_payload<T: serde::de::DeserializeOwned>(
    payload: Option<&[u8]>,
) -> Result<Option<T>, super::Error> {
    payload
        .map(|p| postcard::from_bytes(p).map_err(super::Error::Payload))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> &[u8] {
        &frame[4..]
    }

    #[test]
    fn a_request_survives_a_round_trip_byte_exact() {
        let args: Vec<&[u8]> = vec![b"with space", b"new\nline", b"a|b", b"\xff\xfe\x00"];
        let req = ToPrimary::Request(WireRequest {
            args,
            cwd: Some(b"/tmp/\xff"),
            env: vec![(b"K", b"V=1")],
            payload: Some(&[1, 2, 3]),
        });
        let frame = encode(&req).unwrap();
        assert_eq!(
            u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
            frame.len() - 4
        );
        let back: ToPrimary<'_> = decode(body(&frame)).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn an_unknown_version_is_rejected() {
        let mut frame = encode(&ToPrimary::Watch).unwrap();
        frame[4] = 99;
        assert!(matches!(
            decode::<ToPrimary<'_>>(body(&frame)),
            Err(FrameError::UnknownVersion { found: 99, .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut frame = encode(&ToPrimary::Watch).unwrap();
        frame.push(0);
        assert!(matches!(
            decode::<ToPrimary<'_>>(body(&frame)),
            Err(FrameError::TrailingBytes { extra: 1 })
        ));
    }

    #[test]
    fn an_empty_body_is_rejected() {
        assert!(matches!(
            decode::<ToPrimary<'_>>(&[]),
            Err(FrameError::Empty)
        ));
    }

    #[test]
    fn garbage_bodies_never_panic_and_are_rejected() {
        // Every 1- and 2-byte body, and a body claiming 2^32 arguments.
        for a in 0..=255u8 {
            let _ = decode::<ToPrimary<'_>>(&[VERSION, a]);
            for b in 0..=255u8 {
                let _ = decode::<ToPrimary<'_>>(&[VERSION, a, b]);
                let _ = decode::<ToSecondary<'_>>(&[VERSION, a, b]);
            }
        }
        let huge = [VERSION, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(
            decode::<ToPrimary<'_>>(&huge),
            Err(FrameError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn an_oversized_length_prefix_is_rejected_before_reading_the_body() {
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let mut buf = Vec::new();
        let err = read_frame(&mut input, &mut buf).await.unwrap_err();
        assert!(matches!(err, FrameError::Oversized { .. }));
        assert_eq!(buf.capacity(), 0, "nothing may be allocated for it");
    }

    #[test]
    fn a_frame_announcing_a_mebibyte_costs_what_arrived_not_what_was_announced() {
        let mut reader = FrameReader::new();
        let used = reader.push(&[0, 0x10, 0, 0, 1]).unwrap();
        assert_eq!(used, 5);
        assert!(!reader.is_complete());
        assert!(reader.capacity() <= FIRST_CHUNK, "{}", reader.capacity());
        let chunk = vec![7u8; 100_000];
        reader.push(&chunk).unwrap();
        assert!(reader.capacity() <= 2 * 100_001, "{}", reader.capacity());
    }

    #[test]
    fn a_frame_fed_one_byte_at_a_time_is_the_frame_and_the_next_one_is_left() {
        let frame = encode(&ToPrimary::Challenge { nonce: [9; 16] }).unwrap();
        let mut stream = frame.clone();
        stream.extend_from_slice(&frame);
        let mut reader = FrameReader::new();
        let mut used = 0;
        while !reader.is_complete() {
            used += reader.push(&stream[used..used + 1]).unwrap();
        }
        assert_eq!(
            used,
            frame.len(),
            "not one byte of the next frame was taken"
        );
        let back: ToPrimary<'_> = decode(reader.body()).unwrap();
        assert_eq!(back, ToPrimary::Challenge { nonce: [9; 16] });
    }

    #[tokio::test]
    async fn a_truncated_frame_is_reported_as_truncated() {
        let frame = encode(&ToPrimary::Watch).unwrap();
        let mut input: &[u8] = &frame[..frame.len() - 1];
        let err = read_frame(&mut input, &mut Vec::new()).await.unwrap_err();
        assert!(matches!(err, FrameError::Truncated));
        let mut input: &[u8] = &frame[..2];
        let err = read_frame(&mut input, &mut Vec::new()).await.unwrap_err();
        assert!(matches!(err, FrameError::Truncated));
        let mut input: &[u8] = &[];
        let err = read_frame(&mut input, &mut Vec::new()).await.unwrap_err();
        assert!(matches!(err, FrameError::Closed));
    }
}
