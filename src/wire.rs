//! The versioned packet format.
//!
//! **Owns:** the byte layout of every datagram cohort sends, and the only code
//! that turns untrusted bytes into a [`Packet`].
//! **Must not touch:** sockets, clocks, randomness or chart state. Everything
//! here is a pure function so that it can be fuzzed and table-tested.
//!
//! # Layout
//!
//! ```text
//! +-------+---------+------------------------------------------+
//! | magic | version | body (postcard)                          |
//! | 4 B   | 1 B     | namespace, sender, incarnation, kind,    |
//! |"cht\0"|   = 1   | want_reply, reply_port, ttl_ms, process, |
//! |       |         | payload                                  |
//! +-------+---------+------------------------------------------+
//! ```
//!
//! The magic and version sit outside the postcard body, so a future version
//! can change the body freely while every version can still tell "not ours"
//! ([`DecodeError::BadMagic`]) from "ours, but newer"
//! ([`DecodeError::UnsupportedVersion`]).
//!
//! # Why decoding cannot be abused
//!
//! [`decode`] borrows the namespace and payload straight out of the datagram
//! (`&str` / `&[u8]`), so it performs **no allocation at all**: a length
//! prefix that claims four gigabytes is compared against the bytes that are
//! actually left and rejected. Datagrams longer than [`MAX_DATAGRAM`] are
//! rejected before anything is parsed, and every byte must be consumed:
//! trailing bytes are an error, not padding. Each packet has exactly one
//! valid encoding: over-long varints are rejected
//! ([`DecodeError::NonCanonical`]).

use serde::{Deserialize, Serialize};

/// The four bytes every cohort datagram starts with.
pub const MAGIC: [u8; 4] = *b"cht\0";

/// The protocol version this build speaks.
pub const VERSION: u8 = 1;

/// The largest datagram cohort sends or accepts, in bytes.
///
/// Announcements are meant to fit in one Ethernet frame; keep custom payloads
/// under about 1,200 bytes to avoid IP fragmentation on real networks.
pub const MAX_DATAGRAM: usize = 8192;

/// The longest application namespace, in bytes of UTF-8.
pub const MAX_NAMESPACE: usize = 64;

/// Length of the fixed header (magic + version) in front of the postcard body.
pub const HEADER_LEN: usize = MAGIC.len() + 1;

/// Instance identifier, unique within a namespace.
pub type Id = u64;

/// What a packet asks of, or tells, its receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Multicast: "I am here, with this payload".
    Announce,
    /// Unicast answer to an [`Kind::Announce`] or [`Kind::Query`]: "I am here too".
    Reply,
    /// Multicast: "whoever is here, tell me" (sent by listen-only sniffers,
    /// which never appear in anyone's chart).
    Query,
    /// Multicast: "I am leaving; forget me now".
    Goodbye,
}

/// One decoded datagram. Borrows from the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packet<'a> {
    /// Application namespace. Instances only see peers in the same namespace.
    pub namespace: &'a str,
    /// The sender's instance id.
    pub sender: Id,
    /// Tells a restarted instance from its previous life: a larger value is
    /// newer. cohort uses the start time in microseconds since the Unix epoch.
    pub incarnation: u64,
    /// What the packet means.
    pub kind: Kind,
    /// The sender asks every receiver for a unicast [`Kind::Reply`] (set on a
    /// newcomer's first announcements so it converges in one round trip).
    pub want_reply: bool,
    /// UDP port of the sender's own unicast socket; replies go there, never
    /// to the shared discovery port.
    pub reply_port: u16,
    /// How long, in milliseconds, receivers may keep the sender in their
    /// chart without hearing from it (they probe it before evicting it).
    pub ttl_ms: u32,
    /// Which process sent this, so that a receiver on the same host can
    /// watch the process itself and see it die at once. `None` where the
    /// sender cannot tell (not Linux).
    pub process: Option<ProcessTag>,
    /// The application payload (service ports or a custom message),
    /// postcard-encoded by the chart layer. Opaque here.
    pub payload: &'a [u8],
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
        "cohort packet of protocol version {found}, this build speaks {VERSION}; upgrade the older instances"
    )]
    UnsupportedVersion {
        /// The version byte found.
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
    /// The namespace is longer than [`MAX_NAMESPACE`].
    #[error("namespace of {len} bytes is longer than the {MAX_NAMESPACE}-byte maximum")]
    NamespaceTooLong {
        /// Length found.
        len: usize,
    },
    /// The body decodes, but not in its one canonical form (for example a
    /// varint with redundant continuation bytes). Accepting it would give
    /// one packet several encodings, which anything that compares, caches
    /// or authenticates packets by their bytes must not have to consider.
    #[error("packet body is not canonically encoded (over-long varint)")]
    NonCanonical,
    /// The body is not a valid postcard encoding of a packet (bad varint,
    /// unknown kind, invalid UTF-8, ...).
    #[error("malformed packet body")]
    Malformed(#[source] postcard::Error),
}

/// Decodes one datagram. Never panics and never allocates.
///
/// ```
/// use cohort::wire::{self, Kind, Packet};
/// let packet = Packet {
///     namespace: "my-app",
///     sender: 7,
///     incarnation: 1,
///     kind: Kind::Announce,
///     want_reply: true,
///     reply_port: 40000,
///     ttl_ms: 29_000,
///     process: None,
///     payload: &[1, 2, 3],
/// };
/// let bytes = wire::encode(&packet);
/// assert_eq!(wire::decode(&bytes), Ok(packet));
/// assert!(wire::decode(&bytes[..bytes.len() - 1]).is_err());
/// ```
pub fn decode(datagram: &[u8]) -> Result<Packet<'_>, DecodeError> {
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
    let Some((&version, body)) = rest.split_first() else {
        return Err(DecodeError::Truncated { len });
    };
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
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
    if packet.namespace.len() > MAX_NAMESPACE {
        return Err(DecodeError::NamespaceTooLong {
            len: packet.namespace.len(),
        });
    }
    Ok(packet)
}

/// Encodes a packet into a new buffer: header, then the postcard body.
///
/// The caller keeps packets within [`MAX_DATAGRAM`]; the chart builder
/// checks this once for the payload so that every announcement fits.
pub fn encode(packet: &Packet<'_>) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(HEADER_LEN + 32 + packet.namespace.len() + packet.payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    // Serializing plain integers, bools, a str and a byte slice into a Vec
    // cannot fail: postcard only errors on full fixed buffers or on types
    // (maps of unknown length, custom errors) that Packet does not contain.
    postcard::to_extend(packet, out).expect("encoding a Packet into a Vec cannot fail")
}
