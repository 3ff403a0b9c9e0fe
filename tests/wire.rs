//! The wire format against well-formed and hostile input. Pure: no sockets.

use cohort::wire::{
    self, DecodeError, HEADER_LEN, Kind, MAGIC, MAX_DATAGRAM, Packet, ProcessTag, VERSION,
};

fn packet(kind: Kind, payload: &[u8]) -> Packet<'_> {
    Packet {
        namespace: "wire-test",
        sender: 0x0123_4567_89ab_cdef,
        incarnation: 1_700_000_000_000_000,
        kind,
        want_reply: kind == Kind::Announce,
        reply_port: 47_000,
        ttl_ms: 30_000,
        process: (kind != Kind::Query).then_some(ProcessTag {
            boot_id: *b"0123456789abcdef",
            pid_namespace: 4_026_531_836,
            pid: 4242,
            start_time: 123_456,
        }),
        payload,
    }
}

#[test]
fn every_packet_kind_survives_a_round_trip() {
    for kind in [Kind::Announce, Kind::Reply, Kind::Query, Kind::Goodbye] {
        for payload in [&[][..], &[0, 1, 2, 255][..], &[7u8; 1000][..]] {
            let p = packet(kind, payload);
            let bytes = wire::encode(&p);
            assert_eq!(&bytes[..4], &MAGIC);
            assert_eq!(bytes[4], VERSION);
            assert_eq!(wire::decode(&bytes), Ok(p));
        }
    }
}

#[test]
fn extreme_field_values_survive_a_round_trip() {
    let ns = "n".repeat(wire::MAX_NAMESPACE);
    let p = Packet {
        namespace: &ns,
        sender: u64::MAX,
        incarnation: u64::MAX,
        kind: Kind::Reply,
        want_reply: true,
        reply_port: u16::MAX,
        ttl_ms: u32::MAX,
        process: Some(ProcessTag {
            boot_id: [0xff; 16],
            pid_namespace: u64::MAX,
            pid: u32::MAX,
            start_time: u64::MAX,
        }),
        payload: &[],
    };
    assert_eq!(wire::decode(&wire::encode(&p)), Ok(p));
}

#[test]
fn a_datagram_truncated_at_any_byte_is_a_typed_error() {
    let bytes = wire::encode(&packet(Kind::Announce, b"ports"));
    for cut in 0..bytes.len() {
        let err = wire::decode(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(err, DecodeError::Truncated { .. }),
            "cut at {cut}: {err:?}"
        );
    }
}

/// Checks that an error is the one a case expects.
type Expect = fn(&DecodeError) -> bool;

#[test]
fn malformed_datagrams_yield_the_matching_typed_error() {
    let good = wire::encode(&packet(Kind::Announce, b"abc"));
    let with_trailing = [good.clone(), vec![0]].concat();
    let mut future = good.clone();
    future[4] = VERSION + 1;
    let mut version_zero = good.clone();
    version_zero[4] = 0;
    let mut wrong_magic = good.clone();
    wrong_magic[0] ^= 0x20;
    // A namespace length prefix of u32::MAX (varint) with nothing behind it.
    let huge_namespace = [&MAGIC[..], &[VERSION, 0xff, 0xff, 0xff, 0xff, 0x0f]].concat();
    // A valid header and namespace, then a u64::MAX varint where the sender
    // id (u64, max 10 bytes) overflows.
    let bad_varint = [&MAGIC[..], &[VERSION, 0], &[0xff; 11]].concat();
    // Payload length prefix claiming 4 GiB inside an otherwise valid packet.
    let mut huge_payload = good[..good.len() - 4].to_vec();
    huge_payload.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
    // Kind index 9 does not exist.
    // Sender and incarnation are varints: with values below 128 they take
    // one byte each, so the kind is at a known offset.
    let p = Packet {
        sender: 1,
        incarnation: 1,
        ..packet(Kind::Query, b"")
    };
    let mut bad_kind = wire::encode(&p);
    let kind_at = HEADER_LEN + 1 + p.namespace.len() + 1 + 1;
    assert_eq!(bad_kind[kind_at], 2, "Query is variant 2");
    bad_kind[kind_at] = 9;
    let mut bad_bool = wire::encode(&p);
    bad_bool[kind_at + 1] = 2;
    let long_ns = "x".repeat(wire::MAX_NAMESPACE + 1);
    let mut long = packet(Kind::Reply, b"");
    long.namespace = &long_ns;
    let long_namespace = wire::encode(&long);
    // Kind 2 as the two-byte varint 0x82 0x00: decodes, but not canonical.
    let mut overlong_kind = wire::encode(&p);
    overlong_kind.splice(kind_at..=kind_at, [0x82, 0x00]);
    let mut invalid_utf8 = good.clone();
    invalid_utf8[HEADER_LEN + 1] = 0xff;

    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("empty", vec![], |e| {
            matches!(e, DecodeError::Truncated { len: 0 })
        }),
        ("not ours", b"GET / HTTP/1.1\r\n".to_vec(), |e| {
            *e == DecodeError::BadMagic
        }),
        ("short and not ours", b"xy".to_vec(), |e| {
            *e == DecodeError::BadMagic
        }),
        ("wrong magic", wrong_magic, |e| *e == DecodeError::BadMagic),
        ("future version", future, |e| {
            *e == DecodeError::UnsupportedVersion { found: VERSION + 1 }
        }),
        ("version zero", version_zero, |e| {
            *e == DecodeError::UnsupportedVersion { found: 0 }
        }),
        ("trailing byte", with_trailing, |e| {
            *e == DecodeError::TrailingBytes { count: 1 }
        }),
        ("oversize", vec![0; MAX_DATAGRAM + 1], |e| {
            matches!(e, DecodeError::Oversize { .. })
        }),
        ("huge namespace length", huge_namespace, |e| {
            matches!(e, DecodeError::Truncated { .. })
        }),
        ("huge payload length", huge_payload, |e| {
            matches!(e, DecodeError::Truncated { .. })
        }),
        ("overlong varint", bad_varint, |e| {
            matches!(e, DecodeError::Malformed(_))
        }),
        ("unknown kind", bad_kind, |e| {
            matches!(e, DecodeError::Malformed(_))
        }),
        ("bool out of range", bad_bool, |e| {
            matches!(e, DecodeError::Malformed(_))
        }),
        ("namespace too long", long_namespace, |e| {
            matches!(e, DecodeError::NamespaceTooLong { len: 65 })
        }),
        ("over-long varint for the kind", overlong_kind, |e| {
            *e == DecodeError::NonCanonical
        }),
        ("namespace not utf-8", invalid_utf8, |e| {
            matches!(e, DecodeError::Malformed(_))
        }),
    ];
    for (name, bytes, expected) in cases {
        let err = wire::decode(&bytes).expect_err(name);
        assert!(expected(&err), "{name}: got {err:?}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn every_single_byte_corruption_decodes_or_fails_without_panicking() {
    let good = wire::encode(&packet(Kind::Announce, b"payload"));
    for at in 0..good.len() {
        for value in 0..=255u8 {
            let mut bytes = good.clone();
            bytes[at] = value;
            let _ = wire::decode(&bytes);
        }
    }
}

/// SplitMix64, seeded: the same "random" inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random datagrams, half of them behind a valid header and a third of
/// those mutated from a valid packet, so the body parser is exercised deep.
/// A poor man's fuzzer that runs on stable Rust in every CI run; the count
/// can be raised with COHORT_FUZZ_ITERATIONS.
#[test]
fn random_datagrams_never_panic_and_what_decodes_re_encodes_identically() {
    let iterations: usize = std::env::var("COHORT_FUZZ_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let valid = wire::encode(&packet(Kind::Announce, b"some payload"));
    let mut rng = Rng(0xC0FFEE);
    let mut decoded = 0;
    for _ in 0..iterations {
        let bytes: Vec<u8> = match rng.below(3) {
            0 => (0..rng.below(80)).map(|_| rng.next() as u8).collect(),
            1 => {
                let mut b = MAGIC.to_vec();
                b.push(VERSION);
                b.extend((0..rng.below(80)).map(|_| rng.next() as u8));
                b
            }
            _ => {
                let mut b = valid.clone();
                for _ in 0..=rng.below(4) {
                    let at = rng.below(b.len());
                    match rng.below(3) {
                        0 => b[at] = rng.next() as u8,
                        1 => {
                            b.remove(at);
                        }
                        _ => b.insert(at, rng.next() as u8),
                    }
                }
                b
            }
        };
        if let Ok(p) = wire::decode(&bytes) {
            decoded += 1;
            // Whatever decodes is a real packet: encoding it gives the
            // same bytes back (no two encodings for one packet).
            assert_eq!(wire::encode(&p), bytes);
        }
    }
    assert!(decoded > 0, "the generator never produced a valid packet");
}
