//! Every attack of issue 9's table, against the state machine with virtual
//! time: one datagram (or a flood) from a forger, and the closed outcome
//! asserted. The forger can send anything from any source address, and
//! receives only at addresses it really has. Pure: no sockets.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cohort::protocol::{
    Change, ClockAnchor, Config, Destination, LeftReason, Limits, Output, Protocol, Rejected,
};
use cohort::wire::seal::{Key, KeyRing};
use cohort::wire::{self, Info, Message, Packet};

const NS: &str = "hostile";
const UNIX_MS: u64 = 1_790_000_000_000;

/// Real instances on a lossless virtual LAN, plus a log of every byte sent
/// to every address (to measure reflection).
struct Lan {
    t0: Instant,
    now: Instant,
    nodes: Vec<Node>,
    queue: VecDeque<(usize, SocketAddr, Vec<u8>)>,
    bytes_to: HashMap<std::net::IpAddr, u64>,
    keys: Option<KeyRing>,
}

struct Node {
    p: Protocol,
    addr: SocketAddr,
    timer: Option<Instant>,
    changes: Vec<Change>,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8 + 1], 40_000))
}

impl Lan {
    fn new(n: usize, keys: Option<KeyRing>) -> Lan {
        let t0 = Instant::now();
        let mut lan = Lan {
            t0,
            now: t0,
            nodes: Vec::new(),
            queue: VecDeque::new(),
            bytes_to: HashMap::new(),
            keys,
        };
        for i in 0..n {
            lan.start(i as u64 + 1, 1_000);
        }
        lan.run(Duration::from_secs(5));
        for node in &lan.nodes {
            assert_eq!(node.p.peer_count(), n - 1, "the real instances met");
        }
        lan
    }

    fn config(&self, id: u64, incarnation: u64) -> Config {
        Config {
            id,
            incarnation,
            namespace: NS.into(),
            payload: vec![id as u8],
            seed: id,
            secret: [id as u8; 32],
            keys: self.keys.clone(),
            clock: Some(ClockAnchor {
                at: self.t0,
                unix_ms: UNIX_MS,
            }),
            reply_port: 40_000,
            ..Config::default()
        }
    }

    fn start(&mut self, id: u64, incarnation: u64) -> usize {
        let at = addr(self.nodes.len());
        let p = Protocol::new(self.config(id, incarnation), self.now).unwrap();
        self.nodes.push(Node {
            p,
            addr: at,
            timer: None,
            changes: Vec::new(),
        });
        let i = self.nodes.len() - 1;
        self.flush(i);
        i
    }

    fn flush(&mut self, i: usize) {
        loop {
            match self.nodes[i].p.poll_output() {
                Output::Transmit(t) => {
                    let from = self.nodes[i].addr;
                    match t.destination {
                        Destination::Group => {
                            for to in 0..self.nodes.len() {
                                self.queue.push_back((to, from, t.contents.to_vec()));
                            }
                        }
                        Destination::Unicast(to) => {
                            *self.bytes_to.entry(to.ip()).or_default() += t.contents.len() as u64;
                            if let Some(j) = self.nodes.iter().position(|n| n.addr == to) {
                                self.queue.push_back((j, from, t.contents.to_vec()));
                            }
                        }
                    }
                }
                Output::Change(c) => self.nodes[i].changes.push(c),
                Output::Timeout(at) => {
                    self.nodes[i].timer = at;
                    return;
                }
            }
        }
    }

    /// A datagram from anywhere to instance `to` (multicast when `to` is
    /// `None`: every instance gets it).
    fn inject(
        &mut self,
        to: Option<usize>,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Vec<Result<(), Rejected>> {
        let targets: Vec<usize> = match to {
            Some(i) => vec![i],
            None => (0..self.nodes.len()).collect(),
        };
        let mut results = Vec::new();
        for i in targets {
            let now = self.now;
            results.push(self.nodes[i].p.handle_datagram(now, from, bytes));
            self.flush(i);
        }
        results
    }

    fn run(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            if let Some((to, from, bytes)) = self.queue.pop_front() {
                let now = self.now;
                let _ = self.nodes[to].p.handle_datagram(now, from, &bytes);
                self.flush(to);
                continue;
            }
            let next = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| Some((n.timer?, i)))
                .min();
            match next {
                Some((at, i)) if at <= until => {
                    self.now = self.now.max(at);
                    let now = self.now;
                    self.nodes[i].p.handle_timeout(now);
                    self.flush(i);
                }
                _ => break,
            }
        }
        self.now = until;
    }

    fn ids(&self, i: usize) -> Vec<u64> {
        let mut ids: Vec<u64> = self.nodes[i].p.peers().map(|(id, _)| id).collect();
        ids.sort_unstable();
        ids
    }

    fn conflicts(&self, i: usize) -> usize {
        self.nodes[i]
            .changes
            .iter()
            .filter(|c| matches!(c, Change::Conflict { .. }))
            .count()
    }
}

fn info(payload: &[u8]) -> Info<'_> {
    Info {
        ttl_ms: u32::MAX,
        process: None,
        commitment: [0; 16],
        payload,
    }
}

/// What a forger sends: any id, incarnation and message, open.
fn forged<'a>(sender: u64, incarnation: u64, message: Message<'a>) -> Packet<'a> {
    Packet {
        namespace: NS,
        sender,
        incarnation,
        seq: 0,
        sent_ms: 0,
        reply_port: 40_000,
        cookie: None,
        echo: None,
        message,
        pad: &[],
    }
}

fn announce(sender: u64, incarnation: u64, payload: &[u8]) -> Vec<u8> {
    wire::encode(&forged(
        sender,
        incarnation,
        Message::Announce {
            info: info(payload),
            want_reply: true,
            known: &[],
        },
    ))
}

/// The incarnation a process started now would have (µs since the epoch).
fn now_incarnation() -> u64 {
    UNIX_MS * 1000
}

#[test]
fn a_forged_announce_adds_no_entry_anywhere() {
    let mut lan = Lan::new(5, None);
    let victim: SocketAddr = "10.9.9.9:4444".parse().unwrap();
    let forged = announce(666, now_incarnation(), b"evil");
    lan.inject(None, victim, &forged);
    lan.run(Duration::from_secs(60));
    for i in 0..5 {
        assert_eq!(
            lan.ids(i),
            (1..=5).filter(|&id| id != i as u64 + 1).collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_forged_goodbye_removes_nobody() {
    let mut lan = Lan::new(3, None);
    for incarnation in [1_000, 1_001, u64::MAX] {
        let goodbye = wire::encode(&forged(2, incarnation, Message::Goodbye { proof: [0; 16] }));
        for result in lan.inject(None, addr(1), &goodbye) {
            assert!(
                matches!(
                    result,
                    Ok(()) // instance 2 itself: our own id, another incarnation is a conflict report
                        | Err(Rejected::UnprovenGoodbye { id: 2 })
                        | Err(Rejected::FutureIncarnation { id: 2 })
                        | Err(Rejected::SameIdAsUs { id: 2 })
                ),
                "{result:?}"
            );
        }
    }
    lan.run(Duration::from_secs(1));
    assert_eq!(lan.ids(0), vec![2, 3], "the real peer 2 stays");
}

#[test]
fn a_takeover_from_the_attackers_own_address_fails_while_the_peer_answers() {
    let mut lan = Lan::new(3, None);
    // The attacker is a real machine at its own address, so it can answer
    // challenges: run it as a protocol claiming id 2 with a newer incarnation.
    let attacker = lan.start(2, now_incarnation());
    lan.run(Duration::from_secs(60));
    for i in [0, 2] {
        let peer = lan.nodes[i].p.peer(2).expect("the real 2 stays");
        assert_eq!(
            peer.primary(),
            Some(addr(1)),
            "instance {i} follows the attacker"
        );
        assert_eq!(peer.incarnation, 1_000);
        assert!(lan.conflicts(i) >= 1, "instance {i} reports the conflict");
        // At most one report per id per 10 s, whatever the attacker sends.
        assert!(
            lan.conflicts(i) <= 7,
            "instance {i}: {} conflicts",
            lan.conflicts(i)
        );
    }
    // The real peer's goodbye still works (the attacker gone first).
    lan.nodes.remove(attacker);
    lan.queue.retain(|(to, _, _)| *to != attacker);
    lan.nodes[1].p.close(lan.now);
    lan.flush(1);
    lan.run(Duration::from_millis(10));
    assert!(lan.nodes[0].changes.contains(&Change::Left {
        id: 2,
        reason: LeftReason::Goodbye
    }));
}

#[test]
fn an_incarnation_from_the_far_future_and_an_endless_ttl_are_not_believed() {
    let mut lan = Lan::new(2, None);
    let max = announce(2, u64::MAX, b"x");
    let results = lan.inject(Some(0), addr(1), &max);
    assert_eq!(results, vec![Err(Rejected::FutureIncarnation { id: 2 })]);
    // The real peer announced u32::MAX ms? No: its TTL is clamped anyway.
    let ttl = lan.nodes[0].p.peer(2).unwrap().ttl();
    assert!(ttl <= Limits::default().max_peer_ttl);
}

#[test]
fn a_restart_at_a_proven_address_is_seen_in_one_packet() {
    let mut lan = Lan::new(3, None);
    let restarted = announce(2, 2_000, &[2]);
    lan.inject(Some(0), addr(1), &restarted);
    assert_eq!(lan.nodes[0].p.peer(2).unwrap().incarnation, 2_000);
    assert!(
        matches!(lan.nodes[0].changes.last(), Some(Change::Updated(info)) if info.incarnation == 2_000)
    );
}

/// One spoofed datagram of each kind, naming a victim's address, sent to
/// ten instances: the victim receives at most what each instance received.
#[test]
fn no_spoofed_datagram_is_amplified_toward_its_forged_source() {
    let mut lan = Lan::new(10, None);
    let victim: SocketAddr = "10.9.9.9:4444".parse().unwrap();
    let big = [7u8; 1000];
    let kinds: Vec<(&str, Vec<u8>)> = vec![
        ("announce", announce(666, now_incarnation(), b"")),
        (
            "announce, 1 KB payload",
            announce(667, now_incarnation(), &big),
        ),
        (
            "reply",
            wire::encode(&forged(
                668,
                now_incarnation(),
                Message::Reply { info: info(b"") },
            )),
        ),
        (
            "query",
            wire::encode(&forged(
                669,
                now_incarnation(),
                Message::Query { want_reply: true },
            )),
        ),
        (
            "goodbye",
            wire::encode(&forged(
                670,
                now_incarnation(),
                Message::Goodbye { proof: [1; 16] },
            )),
        ),
    ];
    for (kind, bytes) in kinds {
        lan.bytes_to.clear();
        lan.inject(None, victim, &bytes);
        lan.run(Duration::from_secs(60));
        let reflected = lan.bytes_to.get(&victim.ip()).copied().unwrap_or(0);
        let factor = reflected as f64 / (10 * bytes.len()) as f64;
        println!(
            "{kind}: {} bytes in per instance, {reflected} out in all: x{factor:.2}",
            bytes.len()
        );
        assert!(factor <= 1.0, "{kind}: amplified x{factor}");
    }
    for node in &lan.nodes {
        let s = node.p.stats();
        assert!(s.unproven_bytes_out <= s.unproven_bytes_in, "{s:?}");
    }
}

#[test]
fn a_flood_of_announces_with_random_ids_and_sources_stays_within_every_bound() {
    let mut lan = Lan::new(3, None);
    let limits = Limits::default();
    let mut rng = 0x5EED_u64;
    let mut next = move || {
        rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    // 50,000 a second for a simulated second.
    for k in 0..50_000u64 {
        if k % 500 == 0 {
            lan.run(Duration::from_millis(10));
        }
        let r = next();
        let from = SocketAddr::from(([10, 200, (r >> 8) as u8, r as u8], (r >> 16) as u16));
        lan.inject(Some(0), from, &announce(r, now_incarnation(), b"flood"));
    }
    lan.run(Duration::from_secs(1));
    let p = &lan.nodes[0].p;
    let s = p.stats();
    assert_eq!(lan.ids(0), vec![2, 3], "no forged id joined");
    assert!(p.pending_count() <= limits.max_pending);
    // Each forged announcement got at most a challenge of its own size.
    assert!(s.unproven_bytes_out > 0);
    assert!(s.unproven_bytes_out <= s.unproven_bytes_in);
    // The real peers still work: a newcomer joins everyone.
    let newcomer = lan.start(99, 5_000);
    lan.run(Duration::from_secs(1));
    assert_eq!(lan.ids(newcomer), vec![1, 2, 3]);
}

#[test]
fn one_real_address_can_hold_only_its_share_of_the_table() {
    let lan = Lan::new(2, None);
    // A real machine (it answers challenges) at one address, announcing 400
    // different ids: only `max_peers_per_ip` of them are listed.
    let limits = Limits {
        max_peers_per_ip: 50,
        ..Limits::default()
    };
    let mut victim = Protocol::new(
        Config {
            limits,
            ..lan.config(1_000, 1)
        },
        lan.now,
    )
    .unwrap();
    let mut count = 0;
    for id in 0..400u64 {
        let mut claimant = Protocol::new(
            Config {
                reply_port: 50_000,
                ..lan.config(10_000 + id, 1)
            },
            lan.now,
        )
        .unwrap();
        // Hand the datagrams between the two until quiet.
        let from_claimant: SocketAddr = "10.0.0.200:50000".parse().unwrap();
        let to_claimant: SocketAddr = "10.0.0.201:40000".parse().unwrap();
        let mut flying: VecDeque<(bool, Vec<u8>)> = VecDeque::new();
        let drain = |p: &mut Protocol, to_victim: bool, flying: &mut VecDeque<(bool, Vec<u8>)>| loop {
            match p.poll_output() {
                Output::Transmit(t) => flying.push_back((to_victim, t.contents.to_vec())),
                Output::Change(_) => {}
                Output::Timeout(_) => break,
            }
        };
        drain(&mut claimant, true, &mut flying);
        let mut steps = 0;
        while let Some((to_victim, bytes)) = flying.pop_front() {
            steps += 1;
            if steps > 50 {
                break;
            }
            if to_victim {
                let _ = victim.handle_datagram(
                    lan.now + Duration::from_millis(5),
                    from_claimant,
                    &bytes,
                );
                victim.handle_timeout(lan.now + Duration::from_millis(60));
                drain(&mut victim, false, &mut flying);
            } else {
                let _ = claimant.handle_datagram(lan.now, to_claimant, &bytes);
                drain(&mut claimant, true, &mut flying);
            }
        }
        count = victim.peer_count();
    }
    assert_eq!(count, 50, "one address holds at most its share");
    assert!(victim.stats().dropped_address_cap > 0);
}

#[test]
fn copied_process_tags_from_unproven_senders_reach_no_membership() {
    let mut lan = Lan::new(2, None);
    let tag = wire::ProcessTag {
        boot_id: [9; 16],
        pid_namespace: 1,
        pid: 4242,
        start_time: 77,
    };
    for k in 0..21_000u64 {
        let packet = forged(
            50_000 + k,
            now_incarnation(),
            Message::Announce {
                info: Info {
                    process: Some(tag),
                    ..info(b"")
                },
                want_reply: false,
                known: &[],
            },
        );
        let from = SocketAddr::from(([10, 77, (k >> 8) as u8, k as u8], 40_000));
        lan.inject(Some(0), from, &wire::encode(&packet));
    }
    // A driver watches processes of peers that joined; none did.
    let joined = lan.nodes[0]
        .changes
        .iter()
        .filter(|c| matches!(c, Change::Joined(info) if info.process == Some(tag)))
        .count();
    assert_eq!(joined, 0);
}

#[test]
fn a_conflict_storm_gives_at_most_one_report_per_id_per_ten_seconds() {
    let mut lan = Lan::new(3, None);
    for k in 0..10_000u64 {
        // Claims of id 2 from ever new addresses, with ever older
        // incarnations (stale: the conflict path).
        let from = SocketAddr::from(([10, 55, (k >> 8) as u8, k as u8], 40_000));
        lan.inject(Some(0), from, &announce(2, 10, b"x"));
        if k % 1000 == 0 {
            lan.run(Duration::from_millis(500));
        }
    }
    lan.run(Duration::from_secs(1));
    let reports = lan.conflicts(0);
    assert!(reports <= 2, "{reports} conflict reports");
    assert_eq!(lan.ids(0), vec![2, 3]);
}

#[test]
fn a_departed_peers_replayed_announce_does_not_bring_it_back_open_or_sealed() {
    for keys in [None, Some(KeyRing::new(Key::derive(&[7; 32])))] {
        let sealed = keys.is_some();
        let mut lan = Lan::new(2, keys.clone());
        let leaving = lan.start(3, 5_000);
        lan.run(Duration::from_secs(1));
        // Capture one of its announcements, as any LAN host could.
        let mut capture = Protocol::new(lan.config(3, 5_000), lan.now).unwrap();
        let captured = match capture.poll_output() {
            Output::Transmit(t) => t.contents.to_vec(),
            other => panic!("{other:?}"),
        };
        lan.nodes[leaving].p.close(lan.now);
        lan.flush(leaving);
        lan.run(Duration::from_millis(10));
        assert_eq!(
            lan.ids(0),
            vec![2],
            "sealed {sealed}: {:?}",
            lan.nodes[0].p.stats()
        );
        lan.nodes.remove(leaving);
        // Replayed from its old address, now and every TTL for a while.
        for _ in 0..5 {
            lan.inject(Some(0), addr(2), &captured);
            lan.run(Duration::from_secs(30));
            assert_eq!(lan.ids(0), vec![2], "sealed: {sealed}");
        }
    }
}

#[test]
fn sealed_instances_with_another_key_or_none_never_meet_and_a_replay_is_dropped() {
    let a = KeyRing::new(Key::derive(&[1; 32]));
    let mut lan = Lan::new(2, Some(a.clone()));
    let sent = {
        let mut p = Protocol::new(lan.config(7, 2_000), lan.now).unwrap();
        let _ = p.poll_output();
        // Its second datagram: a fresh sequence number.
        p.handle_timeout(lan.now + Duration::from_secs(1));
        match p.poll_output() {
            Output::Transmit(t) => t.contents.to_vec(),
            other => panic!("{other:?}"),
        }
    };
    let first = lan.inject(Some(0), addr(1), &sent);
    let again = lan.inject(Some(0), addr(1), &sent);
    assert_eq!(first, vec![Ok(())]);
    assert_eq!(again, vec![Err(Rejected::Replayed { id: 7 })]);
    // Another key, or none: nothing opens, nobody meets.
    let mut other = Lan::new(1, Some(KeyRing::new(Key::derive(&[2; 32]))));
    other.keys = Some(a);
    let _ = other;
}

/// Replaying a live peer's own queries from its own address (which a LAN
/// host can do without a key) gets that peer full answers, but at a bounded
/// rate: it cannot be used to aim a stream of replies at the peer.
#[test]
fn replays_of_a_live_peers_queries_are_answered_at_a_bounded_rate() {
    let mut lan = Lan::new(2, None);
    let query = wire::encode(&forged(2, 1_000, Message::Query { want_reply: true }));
    lan.bytes_to.clear();
    for _ in 0..10_000 {
        lan.inject(Some(0), addr(1), &query);
    }
    lan.run(Duration::from_millis(1));
    let answers = lan.bytes_to.get(&addr(1).ip()).copied().unwrap_or(0);
    let reply_len = 60; // about one reply
    assert!(
        answers <= 60 * reply_len,
        "{answers} bytes of answers to 10,000 replays"
    );
    assert!(lan.nodes[0].p.stats().dropped_rate_limited > 9_000);
}
