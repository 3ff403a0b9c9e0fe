//! Sealed packets: the body encrypted and authenticated with
//! XChaCha20-Poly1305 (RustCrypto), the header as associated data.
//!
//! **Owns:** [`Key`], [`KeyRing`], sealing and opening. **Must not touch:**
//! replay protection or anything stateful: that is the protocol's (`replay`),
//! because it needs the sender's history. Opening never allocates beyond the
//! caller's reused scratch buffer, and never panics.
//!
//! A key is derived from the application's secret with BLAKE3's key
//! derivation; its 4-byte id (derived separately) travels in the header, so a
//! receiver knows which of its keys to use without trying each. A
//! [`KeyRing`] seals with its current key and opens with the current or the
//! next one, which is how a key is rotated without a restart and without a
//! gap (see [`KeyRing::with_next`]).

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

use super::{DecodeError, Frame, HEADER_LEN, MAGIC, MODE_SEALED, Packet, VERSION};

/// Length of the authentication tag at the end of a sealed packet.
pub const TAG_LEN: usize = 16;

/// Bytes a sealed packet has beyond the open body: header, key id, nonce
/// and tag.
pub const SEALED_OVERHEAD: usize = HEADER_LEN + 4 + 24 + TAG_LEN;

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET: usize = 16;

/// A packet key, derived from a secret. `Debug` shows only its id.
#[derive(Clone)]
pub struct Key {
    id: [u8; 4],
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:02x?})", self.id)
    }
}

impl Key {
    /// Derives the packet key (and its id) from `secret`. Use at least
    /// [`MIN_SECRET`] random bytes (32 is good); every instance of a cohort
    /// needs the same secret.
    ///
    /// ```
    /// use cohort::wire::seal::Key;
    /// let a = Key::derive(b"0123456789abcdef0123456789abcdef");
    /// let b = Key::derive(b"0123456789abcdef0123456789abcdef");
    /// assert_eq!(a.id(), b.id());
    /// ```
    pub fn derive(secret: &[u8]) -> Key {
        let key = blake3::derive_key("cohort 2026 v2 packet key", secret);
        let id = blake3::derive_key("cohort 2026 v2 packet key id", secret);
        Key {
            id: [id[0], id[1], id[2], id[3]],
            cipher: XChaCha20Poly1305::new(&key.into()),
        }
    }

    /// The 4 bytes that name this key in sealed packets.
    pub fn id(&self) -> [u8; 4] {
        self.id
    }
}

/// The keys of a chart: packets are sealed with the current key and opened
/// with the current or the next one.
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: Key,
    next: Option<Key>,
}

impl KeyRing {
    /// Seals and opens with `current` only.
    pub fn new(current: Key) -> Self {
        KeyRing {
            current,
            next: None,
        }
    }

    /// Also opens packets sealed with `next`. Rotating a key without a gap:
    /// give every instance `(old, next: new)`; once all run with it, switch
    /// each to `(new, next: old)` (they seal with the new key, still open
    /// the old); finally drop the old key.
    pub fn with_next(mut self, next: Key) -> Self {
        self.next = Some(next);
        self
    }

    /// The key packets are sealed with.
    pub fn current(&self) -> &Key {
        &self.current
    }

    /// Seals `packet` with the current key under `nonce`, which must never
    /// repeat for this key.
    pub fn seal(&self, packet: &Packet<'_>, nonce: [u8; 24]) -> Vec<u8> {
        let mut out = Vec::with_capacity(SEALED_OVERHEAD + super::body_len(packet));
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(MODE_SEALED);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce);
        let header_len = out.len();
        let mut out = super::encode_body_into(packet, out);
        let (header, body) = out.split_at_mut(header_len);
        // Encryption of a buffer under 2^38 bytes cannot fail.
        let tag = self
            .current
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), header, body)
            .expect("a datagram is far below the AEAD's length limit");
        out.extend_from_slice(&tag);
        out
    }

    /// Opens a sealed frame into `scratch` (cleared first; reused between
    /// calls, so opening allocates nothing once it is large enough) and
    /// decodes the body.
    ///
    /// # Errors
    /// [`DecodeError::UnknownKey`], [`DecodeError::Unauthentic`], anything
    /// [`super::decode_body`] rejects, or [`DecodeError::WrongMode`] for an
    /// open frame.
    pub fn open<'s>(
        &self,
        frame: Frame<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Result<Packet<'s>, DecodeError> {
        let Frame::Sealed {
            key_id,
            nonce,
            ciphertext,
            header,
        } = frame
        else {
            return Err(DecodeError::WrongMode {
                found: "open",
                expected: "sealed",
            });
        };
        let key = if key_id == self.current.id {
            &self.current
        } else {
            match &self.next {
                Some(next) if next.id == key_id => next,
                _ => return Err(DecodeError::UnknownKey),
            }
        };
        let (body, tag) = ciphertext.split_at(ciphertext.len() - TAG_LEN);
        scratch.clear();
        scratch.extend_from_slice(body);
        key.cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                header,
                scratch,
                Tag::from_slice(tag),
            )
            .map_err(|_| DecodeError::Unauthentic)?;
        let len = header.len() + ciphertext.len();
        super::decode_body(scratch, len)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Info, Message, split};
    use super::*;

    fn packet() -> Packet<'static> {
        Packet {
            namespace: "ns",
            sender: 7,
            incarnation: 1,
            seq: 3,
            sent_ms: 4,
            reply_port: 5,
            cookie: None,
            echo: None,
            message: Message::Reply {
                info: Info {
                    ttl_ms: 29_000,
                    process: None,
                    commitment: [1; 16],
                    payload: b"secret port",
                },
            },
            pad: &[],
        }
    }

    fn ring(secret: &[u8]) -> KeyRing {
        KeyRing::new(Key::derive(secret))
    }

    const A: &[u8] = b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &[u8] = b"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn a_sealed_packet_opens_with_the_same_key_and_hides_its_payload() {
        let sealed = ring(A).seal(&packet(), [9; 24]);
        assert!(!sealed.windows(11).any(|w| w == b"secret port"));
        let mut scratch = Vec::new();
        let opened = ring(A).open(split(&sealed).unwrap(), &mut scratch);
        assert_eq!(opened, Ok(packet()));
    }

    #[test]
    fn a_wrong_key_a_flipped_bit_and_a_truncated_tag_are_rejected() {
        let sealed = ring(A).seal(&packet(), [9; 24]);
        let mut scratch = Vec::new();
        assert_eq!(
            ring(B).open(split(&sealed).unwrap(), &mut scratch),
            Err(DecodeError::UnknownKey)
        );
        for at in HEADER_LEN..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[at] ^= 0x01;
            let result = split(&flipped).and_then(|f| ring(A).open(f, &mut scratch));
            assert!(result.is_err(), "flipping byte {at} went unnoticed");
        }
        let truncated = &sealed[..sealed.len() - 1];
        let result = split(truncated).and_then(|f| ring(A).open(f, &mut scratch));
        assert_eq!(result, Err(DecodeError::Unauthentic));
    }

    #[test]
    fn a_ring_opens_its_next_key_and_seals_with_its_current_one() {
        let old = ring(A);
        let rotating = ring(A).with_next(Key::derive(B));
        let new = KeyRing::new(Key::derive(B)).with_next(Key::derive(A));
        let mut scratch = Vec::new();
        let from_new = new.seal(&packet(), [1; 24]);
        let from_old = old.seal(&packet(), [2; 24]);
        assert!(
            rotating
                .open(split(&from_new).unwrap(), &mut scratch)
                .is_ok()
        );
        assert!(new.open(split(&from_old).unwrap(), &mut scratch).is_ok());
        assert_eq!(
            old.open(split(&from_new).unwrap(), &mut scratch),
            Err(DecodeError::UnknownKey)
        );
    }
}
