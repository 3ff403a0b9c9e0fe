//! The wire format against well-formed and hostile input, open and sealed.
//! Pure: no sockets.

use cohort::wire::seal::{Key, KeyRing, TAG_LEN};
use cohort::wire::{
    self, DecodeError, HEADER_LEN, Info, MAGIC, MAX_DATAGRAM, MAX_PAD, Message, Packet, ProcessTag,
    VERSION,
};

const TAG: ProcessTag = ProcessTag {
    boot_id: *b"0123456789abcdef",
    pid_namespace: 4_026_531_836,
    pid: 4242,
    start_time: 123_456,
};

fn info(payload: &[u8]) -> Info<'_> {
    Info {
        ttl_ms: 30_000,
        process: Some(TAG),
        commitment: [3; 16],
        payload,
    }
}

/// One packet of each kind, carrying `payload` where the kind has one.
fn packets(payload: &[u8]) -> Vec<Packet<'_>> {
    let base = |message| Packet {
        namespace: "wire-test",
        sender: 0x0123_4567_89ab_cdef,
        incarnation: 1_700_000_000_000_000,
        seq: 9,
        sent_ms: 1_700_000_000_000,
        reply_port: 47_000,
        cookie: Some([1; 8]),
        echo: None,
        message,
        pad: &[],
    };
    vec![
        base(Message::Announce {
            info: info(payload),
            want_reply: true,
            known: &[1, 2, 3, 4, 5],
        }),
        base(Message::Reply {
            info: info(payload),
        }),
        Packet {
            echo: Some([2; 8]),
            pad: &[0; 40],
            ..base(Message::Query { want_reply: true })
        },
        base(Message::Goodbye { proof: [4; 16] }),
    ]
}

fn ring(secret: &[u8]) -> KeyRing {
    KeyRing::new(Key::derive(secret))
}

#[test]
fn every_packet_kind_survives_a_round_trip_open_and_sealed() {
    let keys = ring(b"a secret of thirty-two bytes!!!!");
    let mut scratch = Vec::new();
    for payload in [&[][..], &[0, 1, 2, 255][..], &[7u8; 1000][..]] {
        for p in packets(payload) {
            let bytes = wire::encode(&p);
            assert_eq!(&bytes[..4], &MAGIC);
            assert_eq!(bytes[4], VERSION);
            assert_eq!(wire::decode(&bytes), Ok(p));
            let sealed = keys.seal(&p, [5; 24]);
            assert_eq!(sealed.len(), bytes.len() + 4 + 24 + TAG_LEN);
            let frame = wire::split(&sealed).unwrap();
            assert_eq!(keys.open(frame, &mut scratch), Ok(p));
        }
    }
}

#[test]
fn extreme_field_values_survive_a_round_trip() {
    let ns = "n".repeat(wire::MAX_NAMESPACE);
    let pad = [0; MAX_PAD];
    let p = Packet {
        namespace: &ns,
        sender: u64::MAX,
        incarnation: u64::MAX,
        seq: u64::MAX,
        sent_ms: u64::MAX,
        reply_port: u16::MAX,
        cookie: Some([0xff; 8]),
        echo: Some([0xff; 8]),
        message: Message::Reply {
            info: Info {
                ttl_ms: u32::MAX,
                process: Some(ProcessTag {
                    boot_id: [0xff; 16],
                    pid_namespace: u64::MAX,
                    pid: u32::MAX,
                    start_time: u64::MAX,
                }),
                commitment: [0xff; 16],
                payload: &[],
            },
        },
        pad: &pad,
    };
    assert_eq!(wire::decode(&wire::encode(&p)), Ok(p));
}

#[test]
fn a_datagram_truncated_at_any_byte_is_a_typed_error() {
    for p in packets(b"ports") {
        let bytes = wire::encode(&p);
        for cut in 0..bytes.len() {
            let err = wire::decode(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, DecodeError::Truncated { .. }),
                "cut at {cut}: {err:?}"
            );
        }
    }
}

/// Checks that an error is the one a case expects.
type Expect = fn(&DecodeError) -> bool;

/// A query whose message tag sits at a known offset: one-byte varints for
/// every number, no cookie, no echo.
fn small_query() -> Packet<'static> {
    Packet {
        namespace: "q",
        sender: 1,
        incarnation: 1,
        seq: 0,
        sent_ms: 0,
        reply_port: 1,
        cookie: None,
        echo: None,
        message: Message::Query { want_reply: true },
        pad: &[],
    }
}

/// Offset of the message tag in `small_query`'s encoding: the header, the
/// namespace (length + 1 byte), five one-byte varints, two `None` tags.
const MESSAGE_AT: usize = HEADER_LEN + 2 + 5 + 2;

#[test]
fn malformed_datagrams_yield_the_matching_typed_error() {
    let good = wire::encode(&packets(b"abc")[0]);
    let with_trailing = [good.clone(), vec![0]].concat();
    let mut future = good.clone();
    future[4] = VERSION + 1;
    let mut version_one = good.clone();
    version_one[4] = 1;
    let mut unknown_mode = good.clone();
    unknown_mode[5] = 7;
    let mut wrong_magic = good.clone();
    wrong_magic[0] ^= 0x20;
    // A namespace length prefix of u32::MAX (varint) with nothing behind it.
    let huge_namespace = [&MAGIC[..], &[VERSION, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]].concat();
    // A one-byte namespace, then a sender id (u64, max 10 bytes) of 11.
    let bad_varint = [&MAGIC[..], &[VERSION, 0, 1, b'x'], &[0xff; 11]].concat();
    // The pad's length prefix claims 4 GiB.
    let mut huge_pad = good[..good.len() - 1].to_vec();
    huge_pad.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
    let q = wire::encode(&small_query());
    assert_eq!(q[MESSAGE_AT], 2, "Query is message variant 2");
    let mut bad_kind = q.clone();
    bad_kind[MESSAGE_AT] = 9;
    let mut bad_bool = q.clone();
    bad_bool[MESSAGE_AT + 1] = 2;
    let long_ns = "x".repeat(wire::MAX_NAMESPACE + 1);
    let long_namespace = wire::encode(&Packet {
        namespace: &long_ns,
        ..small_query()
    });
    // Variant 2 as the two-byte varint 0x82 0x00: decodes, but not canonical.
    let mut overlong_kind = q.clone();
    overlong_kind.splice(MESSAGE_AT..=MESSAGE_AT, [0x82, 0x00]);
    let mut invalid_utf8 = q.clone();
    invalid_utf8[HEADER_LEN + 1] = 0xff;
    let mut dirty_pad = wire::encode(&Packet {
        pad: &[0; 4],
        ..small_query()
    });
    *dirty_pad.last_mut().unwrap() = 1;
    let too_much_pad = wire::encode(&Packet {
        pad: &[0; MAX_PAD + 1],
        ..small_query()
    });
    let sealed = ring(b"0123456789abcdef0123456789abcdef").seal(&small_query(), [1; 24]);

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
        ("version 1, never answered", version_one, |e| {
            *e == DecodeError::UnsupportedVersion { found: 1 }
        }),
        ("unknown mode", unknown_mode, |e| {
            *e == DecodeError::UnknownMode { found: 7 }
        }),
        ("sealed where open is expected", sealed, |e| {
            matches!(e, DecodeError::WrongMode { .. })
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
        ("huge pad length", huge_pad, |e| {
            matches!(e, DecodeError::Truncated { .. })
        }),
        ("overlong varint", bad_varint, |e| {
            matches!(e, DecodeError::Malformed(_))
        }),
        ("unknown message", bad_kind, |e| {
            matches!(e, DecodeError::Malformed(_))
        }),
        ("bool out of range", bad_bool, |e| {
            matches!(e, DecodeError::Malformed(_))
        }),
        ("namespace too long", long_namespace, |e| {
            *e == DecodeError::TooLong
        }),
        ("too much padding", too_much_pad, |e| {
            *e == DecodeError::TooLong
        }),
        ("padding that is not zeros", dirty_pad, |e| {
            *e == DecodeError::NonCanonical
        }),
        ("over-long varint for the message", overlong_kind, |e| {
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
fn a_sealed_packet_rejects_a_wrong_key_any_flipped_bit_and_a_truncated_tag() {
    let keys = ring(b"0123456789abcdef0123456789abcdef");
    let other = ring(b"fedcba9876543210fedcba9876543210");
    let sealed = keys.seal(&packets(b"secret")[1], [7; 24]);
    let mut scratch = Vec::new();
    let open = |bytes: &[u8], ring: &KeyRing, scratch: &mut Vec<u8>| {
        wire::split(bytes).and_then(|f| ring.open(f, scratch).map(|_| ()))
    };
    assert_eq!(
        open(&sealed, &other, &mut scratch),
        Err(DecodeError::UnknownKey)
    );
    for at in HEADER_LEN..sealed.len() {
        for bit in 0..8 {
            let mut flipped = sealed.clone();
            flipped[at] ^= 1 << bit;
            assert!(
                open(&flipped, &keys, &mut scratch).is_err(),
                "byte {at} bit {bit}"
            );
        }
    }
    for cut in 1..=TAG_LEN {
        let short = &sealed[..sealed.len() - cut];
        assert!(open(short, &keys, &mut scratch).is_err(), "cut {cut}");
    }
    assert_eq!(open(&sealed, &keys, &mut scratch), Ok(()));
}

#[test]
fn every_single_byte_corruption_decodes_or_fails_without_panicking() {
    for p in packets(b"payload") {
        let good = wire::encode(&p);
        for at in 0..good.len() {
            for value in 0..=255u8 {
                let mut bytes = good.clone();
                bytes[at] = value;
                let _ = wire::decode(&bytes);
            }
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
/// those mutated from a valid packet, so the body parser is exercised deep;
/// and the same for sealed packets, opened with the right key. The stable
/// counterpart of the coverage-guided fuzz targets in `fuzz/`: it runs in
/// every CI run; raise the count with COHORT_FUZZ_ITERATIONS.
#[test]
fn random_datagrams_never_panic_and_what_decodes_re_encodes_identically() {
    let iterations: usize = std::env::var("COHORT_FUZZ_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let valid: Vec<Vec<u8>> = packets(b"some payload").iter().map(wire::encode).collect();
    let keys = ring(b"0123456789abcdef0123456789abcdef");
    let sealed: Vec<Vec<u8>> = packets(b"x")
        .iter()
        .map(|p| keys.seal(p, [3; 24]))
        .collect();
    let mut rng = Rng(0xC0FFEE);
    let mut decoded = 0;
    let mut scratch = Vec::new();
    for _ in 0..iterations {
        let bytes: Vec<u8> = match rng.below(4) {
            0 => (0..rng.below(80)).map(|_| rng.next() as u8).collect(),
            1 => {
                let mut b = MAGIC.to_vec();
                b.extend([VERSION, rng.below(2) as u8]);
                b.extend((0..rng.below(80)).map(|_| rng.next() as u8));
                b
            }
            which => {
                let pool = if which == 2 { &valid } else { &sealed };
                let mut b = pool[rng.below(pool.len())].clone();
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
        if let Ok(frame) = wire::split(&bytes) {
            // A mutated sealed packet must never open.
            let _ = keys.open(frame, &mut scratch);
        }
    }
    assert!(decoded > 0, "the generator never produced a valid packet");
}
