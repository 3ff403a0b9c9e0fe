//! Length-prefixed, versioned frames exchanged between a secondary and the primary.
//!
//! A frame is a 4-byte big-endian length `L` followed by `L` bytes: one version
//! byte ([`VERSION`]) and a postcard body. `L` never exceeds [`MAX_FRAME`], so a
//! reader allocates at most that much for one frame, whatever the peer claims.
//! Bodies borrow their byte strings from the frame buffer, so decoding copies
//! nothing and serde's capped pre-allocation is the only other allocation.
//! Anything that is not exactly one well-formed message of this version is a
//! typed [`FrameError`]; decoding never panics.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// Reads one frame body into `buf` (replacing its contents).
///
/// Allocates at most [`MAX_FRAME`] bytes, whatever the length prefix says.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]).await {
            Ok(0) if filled == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::Oversized {
            len: len as u64,
            max: MAX_FRAME,
        });
    }
    buf.clear();
    buf.resize(len, 0);
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(FrameError::Io(e)),
    }
}

/// Writes a complete, already encoded frame.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
) -> Result<(), FrameError> {
    writer.write_all(frame).await.map_err(FrameError::Io)?;
    writer.flush().await.map_err(FrameError::Io)
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
