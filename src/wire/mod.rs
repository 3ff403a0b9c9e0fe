//! The versioned packet format.
//!
//! **Owns:** the byte layout of every datagram cohort sends, the only code
//! that turns untrusted bytes into a [`Packet`], and the authenticated
//! encryption of sealed packets ([`seal`]). **Must not touch:** sockets,
//! clocks, randomness or chart state. Everything here is a pure function so
//! that it can be fuzzed and table-tested.
//!
//! # Layout
//!
//! ```text
//! open:   | magic "cht\0" | version 2 | mode 0 | body (postcard)                        |
//! sealed: | magic "cht\0" | version 2 | mode 1 | key id (4) | nonce (24) | body, encrypted | tag (16) |
//!           `---------------- associated data of the AEAD ---------------'
//! ```
//!
//! The body is a [`Packet`]: who sends (namespace, id, incarnation, a
//! sequence number and the sender's clock), where to answer (reply port),
//! the address-validation tokens ([`Packet::cookie`], [`Packet::echo`]),
//! the [`Message`] itself, and zero padding. The magic and version sit
//! outside the body, so every version can tell "not ours"
//! ([`DecodeError::BadMagic`]) from "ours, but another version"
//! ([`DecodeError::UnsupportedVersion`]).
//!
//! Version 1 (the unreleased development format) is not decoded: it has no
//! address validation, so answering it would reopen the reflection and
//! spoofing holes version 2 closes, and no released cohort ever spoke it.
//!
//! # Why decoding cannot be abused
//!
//! [`decode`] borrows the namespace, payload, filter and padding straight out
//! of the datagram (`&str` / `&[u8]`), so it performs **no allocation at
//! all**: a length prefix that claims four gigabytes is compared against the
//! bytes that are actually left and rejected. Datagrams longer than
//! [`MAX_DATAGRAM`] are rejected before anything is parsed, and every byte
//! must be consumed. Each packet has exactly one valid encoding: over-long
//! varints and non-zero padding are rejected ([`DecodeError::NonCanonical`]).

use serde::{Deserialize, Serialize};

pub mod seal;

/// The four bytes every cohort datagram starts with.
pub const MAGIC: [u8; 4] = *b"cht\0";

/// The protocol version this build speaks.
pub const VERSION: u8 = 2;

/// Mode byte of an open (unencrypted) packet.
pub const MODE_OPEN: u8 = 0;
/// Mode byte of a sealed (encrypted and authenticated) packet.
pub const MODE_SEALED: u8 = 1;

/// The largest datagram cohort sends or accepts, in bytes.
///
/// Announcements are meant to fit in one Ethernet frame; keep custom payloads
/// under about 1,000 bytes to avoid IP fragmentation on real networks.
pub const MAX_DATAGRAM: usize = 8192;

/// The longest application namespace, in bytes of UTF-8.
pub const MAX_NAMESPACE: usize = 64;

/// The most padding a packet may carry.
pub const MAX_PAD: usize = 1200;

/// Length of the fixed header of an open packet (magic, version, mode).
pub const HEADER_LEN: usize = MAGIC.len() + 2;

/// Instance identifier, unique within a namespace.
pub type Id = u64;

/// An address-validation token: issued by a receiver to the address a packet
/// claims to come from ([`Packet::cookie`]), and proof of receiving there
/// when it comes back ([`Packet::echo`]).
pub type Cookie = [u8; 8];

/// What a packet says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<'a> {
    /// Multicast: "I am here, with this payload".
    Announce {
        /// What the sender is.
        #[serde(borrow)]
        info: Info<'a>,
        /// The sender asks receivers for a unicast reply (a newcomer's first
        /// announcements).
        want_reply: bool,
        /// A filter of the ids the sender has already heard from; those
        /// need not reply again. Empty: no filter.
        #[serde(borrow)]
        known: &'a [u8],
    },
    /// Unicast: "I am here too", the answer to an announcement or query.
    Reply {
        /// What the sender is.
        #[serde(borrow)]
        info: Info<'a>,
    },
    /// "Whoever receives this, answer me" (a probe of a silent peer, a
    /// sniffer's question, or a validation step). Carries no payload.
    Query {
        /// Whether the sender wants a full [`Message::Reply`].
        want_reply: bool,
    },
    /// Multicast: "I am leaving; forget me now".
    Goodbye {
        /// The secret whose hash this incarnation published as
        /// [`Info::commitment`]: only the real instance knows it, so nobody
        /// else can say goodbye on its behalf.
        proof: [u8; 16],
    },
}

/// What an instance says about itself in announcements and replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info<'a> {
    /// How long, in milliseconds, receivers may keep the sender in their
    /// chart without hearing from it (they probe it before evicting it).
    pub ttl_ms: u32,
    /// Which process sent this, so that a receiver on the same host can
    /// watch the process itself and see it die at once. `None` where the
    /// sender cannot tell.
    pub process: Option<ProcessTag>,
    /// The hash of this incarnation's goodbye secret ([`Message::Goodbye`]).
    pub commitment: [u8; 16],
    /// The application payload (service ports or a custom message),
    /// postcard-encoded by the chart layer. Opaque here.
    pub payload: &'a [u8],
}

/// One decoded packet. Borrows from the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packet<'a> {
    /// Application namespace. Instances only see peers in the same namespace.
    pub namespace: &'a str,
    /// The sender's instance id.
    pub sender: Id,
    /// Tells a restarted instance from its previous life: a larger value is
    /// newer. cohort uses the start time in microseconds since the Unix epoch.
    pub incarnation: u64,
    /// Counts the packets of this incarnation (replay protection of sealed
    /// packets).
    pub seq: u64,
    /// The sender's clock when it sent this, in milliseconds since the Unix
    /// epoch (replay protection of sealed packets).
    pub sent_ms: u64,
    /// UDP port of the sender's unicast socket; answers go there.
    pub reply_port: u16,
    /// A token for the receiver to echo back from the address this packet
    /// came from.
    pub cookie: Option<Cookie>,
    /// The token the receiver issued to the sender, echoed: proof that the
    /// sender receives at the address this packet came from.
    pub echo: Option<Cookie>,
    /// What the packet says.
    #[serde(borrow)]
    pub message: Message<'a>,
    /// Zeros, so that a newcomer's request is as large as the answer it asks
    /// for (an answer to an address not yet proven is never larger than
    /// what arrived from it). At most [`MAX_PAD`] bytes.
    pub pad: &'a [u8],
}

/// Identifies one process on one host, across pid reuse.
///
/// Two tags are on the same host, in the same pid namespace, when
/// `boot_id` and `pid_namespace` match; then `pid` names the process there,
/// and `start_time` tells it apart from a later process that reuses the pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessTag {
    /// The kernel's boot id (Linux: `/proc/sys/kernel/random/boot_id`).
    pub boot_id: [u8; 16],
    /// Inode number of the pid namespace (Linux: `/proc/self/ns/pid`).
    pub pid_namespace: u64,
    /// Process id in that namespace.
    pub pid: u32,
    /// Start time in clock ticks after boot (Linux: field 22 of `/proc/<pid>/stat`).
    pub start_time: u64,
}

/// Why a datagram was rejected. Every variant has the same effect on state:
/// **the datagram is dropped and nothing else changes.**
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than the fixed header, or the body ended early.
    #[error("datagram is truncated: {len} bytes is too short for a cohort packet")]
    Truncated {
        /// Length of the datagram.
        len: usize,
    },
    /// Does not start with [`MAGIC`]: not a cohort packet at all.
    #[error(
        "datagram does not start with the cohort magic bytes (another protocol shares the port?)"
    )]
    BadMagic,
    /// A cohort packet of a version this build does not speak.
    #[error(
        "cohort packet of protocol version {found}, this build speaks {VERSION}; run the same cohort version everywhere"
    )]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// A mode byte that is neither open nor sealed.
    #[error("cohort packet of unknown mode {found}")]
    UnknownMode {
        /// The mode byte found.
        found: u8,
    },
    /// Longer than [`MAX_DATAGRAM`].
    #[error("datagram of {len} bytes is larger than the {MAX_DATAGRAM}-byte maximum")]
    Oversize {
        /// Length of the datagram.
        len: usize,
    },
    /// The body decoded but bytes were left over.
    #[error("{count} trailing bytes after the packet body")]
    TrailingBytes {
        /// How many bytes were left.
        count: usize,
    },
    /// The namespace is longer than [`MAX_NAMESPACE`], or the padding longer
    /// than [`MAX_PAD`].
    #[error("a field is longer than its maximum")]
    TooLong,
    /// The body decodes, but not in its one canonical form (a varint with
    /// redundant continuation bytes, padding that is not zeros). Accepting it
    /// would give one packet several encodings.
    #[error("packet body is not canonically encoded")]
    NonCanonical,
    /// The body is not a valid postcard encoding of a packet (bad varint,
    /// unknown kind, invalid UTF-8, ...).
    #[error("malformed packet body")]
    Malformed(#[source] postcard::Error),
    /// A sealed packet where open ones are expected (a chart with a key sent
    /// it; this one has none), or the other way round.
    #[error(
        "a {found} packet where {expected} ones are expected: are the instances configured with the same key?"
    )]
    WrongMode {
        /// What arrived.
        found: &'static str,
        /// What this chart speaks.
        expected: &'static str,
    },
    /// A sealed packet under a key this chart does not have.
    #[error("sealed packet under an unknown key")]
    UnknownKey,
    /// A sealed packet whose authentication tag does not verify: a wrong
    /// key, a flipped bit, or a forgery.
    #[error("sealed packet failed authentication")]
    Unauthentic,
}

/// The parts of a datagram, before the body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// An open packet: its body.
    Open(&'a [u8]),
    /// A sealed packet.
    Sealed {
        /// Which key sealed it.
        key_id: [u8; 4],
        /// The AEAD nonce.
        nonce: &'a [u8; 24],
        /// The encrypted body followed by the 16-byte tag.
        ciphertext: &'a [u8],
        /// The associated data: every header byte up to the ciphertext.
        header: &'a [u8],
    },
}

/// Checks the fixed header and splits a datagram into its parts. Never
/// panics and never allocates.
pub fn split(datagram: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let len = datagram.len();
    if len > MAX_DATAGRAM {
        return Err(DecodeError::Oversize { len });
    }
    let Some((magic, rest)) = datagram.split_first_chunk::<4>() else {
        // A prefix of the magic is a truncated packet; anything else is not ours.
        return if MAGIC.starts_with(datagram) {
            Err(DecodeError::Truncated { len })
        } else {
            Err(DecodeError::BadMagic)
        };
    };
    if *magic != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let Some((&version, rest)) = rest.split_first() else {
        return Err(DecodeError::Truncated { len });
    };
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    let Some((&mode, rest)) = rest.split_first() else {
        return Err(DecodeError::Truncated { len });
    };
    match mode {
        MODE_OPEN => Ok(Frame::Open(rest)),
        MODE_SEALED => {
            let (key_id, rest) = rest
                .split_first_chunk::<4>()
                .ok_or(DecodeError::Truncated { len })?;
            let (nonce, ciphertext) = rest
                .split_first_chunk::<24>()
                .ok_or(DecodeError::Truncated { len })?;
            if ciphertext.len() < seal::TAG_LEN {
                return Err(DecodeError::Truncated { len });
            }
            Ok(Frame::Sealed {
                key_id: *key_id,
                nonce,
                ciphertext,
                header: &datagram[..datagram.len() - ciphertext.len()],
            })
        }
        found => Err(DecodeError::UnknownMode { found }),
    }
}

/// Decodes an open datagram. Never panics and never allocates.
///
/// ```
/// use cohort::wire::{self, Info, Message, Packet};
/// let packet = Packet {
///     namespace: "my-app",
///     sender: 7,
///     incarnation: 1,
///     seq: 0,
///     sent_ms: 0,
///     reply_port: 40000,
///     cookie: None,
///     echo: None,
///     message: Message::Reply {
///         info: Info { ttl_ms: 29_000, process: None, commitment: [0; 16], payload: &[1, 2, 3] },
///     },
///     pad: &[],
/// };
/// let bytes = wire::encode(&packet);
/// assert_eq!(wire::decode(&bytes), Ok(packet));
/// assert!(wire::decode(&bytes[..bytes.len() - 1]).is_err());
/// ```
pub fn decode(datagram: &[u8]) -> Result<Packet<'_>, DecodeError> {
    match split(datagram)? {
        Frame::Open(body) => decode_body(body, datagram.len()),
        Frame::Sealed { .. } => Err(DecodeError::WrongMode {
            found: "sealed",
            expected: "open",
        }),
    }
}

/// Decodes a packet body (the plaintext of a sealed packet, or the rest of
/// an open one). `len` is the datagram's length, for error reports.
pub fn decode_body(body: &[u8], len: usize) -> Result<Packet<'_>, DecodeError> {
    let (packet, trailing) =
        postcard::take_from_bytes::<Packet<'_>>(body).map_err(|e| match e {
            postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated { len },
            other => DecodeError::Malformed(other),
        })?;
    if !trailing.is_empty() {
        return Err(DecodeError::TrailingBytes {
            count: trailing.len(),
        });
    }
    if packet.namespace.len() > MAX_NAMESPACE || packet.pad.len() > MAX_PAD {
        return Err(DecodeError::TooLong);
    }
    if packet.pad.iter().any(|&b| b != 0) {
        return Err(DecodeError::NonCanonical);
    }
    // Re-measure the canonical encoding (no allocation): a shorter one means
    // the sender padded a varint.
    let canonical = postcard::serialize_with_flavor::<_, _, usize>(
        &packet,
        postcard::ser_flavors::Size::default(),
    )
    .map_err(DecodeError::Malformed)?;
    if canonical != body.len() {
        return Err(DecodeError::NonCanonical);
    }
    Ok(packet)
}

/// The encoded size of a packet's body.
pub fn body_len(packet: &Packet<'_>) -> usize {
    // Serializing plain integers, bools, strs and byte slices cannot fail.
    postcard::serialize_with_flavor::<_, _, usize>(packet, postcard::ser_flavors::Size::default())
        .unwrap_or(usize::MAX)
}

/// Encodes an open packet into a new buffer: header, then the body.
///
/// The caller keeps packets within [`MAX_DATAGRAM`]; the chart builder
/// checks this once for the payload so that every announcement fits.
pub fn encode(packet: &Packet<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body_len(packet));
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(MODE_OPEN);
    encode_body_into(packet, out)
}

/// Appends the postcard body of `packet` to `out`.
pub(crate) fn encode_body_into(packet: &Packet<'_>, out: Vec<u8>) -> Vec<u8> {
    // Serializing plain integers, bools, strs and byte slices into a Vec
    // cannot fail: postcard only errors on full fixed buffers or on types
    // (maps of unknown length, custom errors) that Packet does not contain.
    postcard::to_extend(packet, out).expect("encoding a Packet into a Vec cannot fail")
}
