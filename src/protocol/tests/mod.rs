//! Unit tests of the coordinator: how packets are dispatched, proven and
//! answered. A tiny virtual network moves datagrams between machines.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::wire::seal::Key;
use crate::wire::{self, Message, Packet};

fn config(id: Id) -> Config {
    Config {
        id,
        incarnation: 1,
        namespace: "test".into(),
        payload: vec![id as u8],
        seed: id,
        secret: [id as u8; 32],
        reply_port: 5000 + id as u16,
        ..Config::default()
    }
}

fn addr(id: Id) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5000 + id as u16))
}

mod links;

/// Machines on a lossless virtual LAN; nothing is sent anywhere.
struct Net {
    now: Instant,
    nodes: Vec<(Protocol, SocketAddr, Option<Instant>)>,
    /// The interface each machine hears everything on (`None`: unsaid).
    via: Vec<Option<u32>>,
    /// Machines whose datagrams are lost, both ways (unplugged).
    cut: Vec<bool>,
    queue: VecDeque<(usize, SocketAddr, Vec<u8>)>,
    /// Every change each machine reported.
    changes: Vec<Vec<Change>>,
    /// Unicast datagrams sent, as (from, to).
    unicast: Vec<(usize, usize)>,
}

impl Net {
    fn new() -> Self {
        Net {
            now: Instant::now(),
            nodes: Vec::new(),
            via: Vec::new(),
            cut: Vec::new(),
            queue: VecDeque::new(),
            changes: Vec::new(),
            unicast: Vec::new(),
        }
    }

    fn add(&mut self, config: Config) -> usize {
        let at = SocketAddr::from(([127, 0, 0, 1], config.reply_port));
        let p = Protocol::new(config, self.now).unwrap();
        self.nodes.push((p, at, None));
        self.via.push(None);
        self.cut.push(false);
        self.changes.push(Vec::new());
        let i = self.nodes.len() - 1;
        self.flush(i);
        i
    }

    fn flush(&mut self, i: usize) {
        loop {
            match self.nodes[i].0.poll_output() {
                Output::Transmit(t) => match t.destination {
                    Destination::Group => {
                        for to in 0..self.nodes.len() {
                            let from = self.nodes[i].1;
                            self.queue.push_back((to, from, t.contents.to_vec()));
                        }
                    }
                    Destination::Unicast(to) => {
                        if let Some(j) = self.nodes.iter().position(|n| n.1 == to) {
                            self.unicast.push((i, j));
                            let from = self.nodes[i].1;
                            self.queue.push_back((j, from, t.contents.to_vec()));
                        }
                    }
                },
                Output::Change(c) => self.changes[i].push(c),
                Output::Timeout(at) => {
                    self.nodes[i].2 = at;
                    return;
                }
            }
        }
    }

    /// Delivers everything queued, and runs timers up to `now + d`.
    fn run(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            if let Some((to, from, bytes)) = self.queue.pop_front() {
                let now = self.now;
                let sender = self.nodes.iter().position(|n| n.1 == from);
                if self.cut[to] || sender.is_some_and(|s| self.cut[s]) {
                    continue;
                }
                let via = self.via[to];
                let _ = self.nodes[to].0.handle_datagram_via(now, from, via, &bytes);
                self.flush(to);
                continue;
            }
            let next = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| Some((n.2?, i)))
                .min();
            match next {
                Some((at, i)) if at <= until => {
                    self.now = self.now.max(at);
                    let now = self.now;
                    self.nodes[i].0.handle_timeout(now);
                    self.flush(i);
                }
                _ => break,
            }
        }
        self.now = until;
    }

    fn joined(&self, i: usize) -> Vec<Id> {
        self.changes[i]
            .iter()
            .filter_map(|c| match c {
                Change::Joined(info) => Some(info.id),
                _ => None,
            })
            .collect()
    }
}

/// Everything queued, and the timeout that ends the drain.
fn drain(p: &mut Protocol) -> (Vec<Transmit>, Vec<Change>, Option<Instant>) {
    let (mut transmits, mut events) = (Vec::new(), Vec::new());
    loop {
        match p.poll_output() {
            Output::Transmit(t) => transmits.push(t),
            Output::Change(e) => events.push(e),
            Output::Timeout(at) => return (transmits, events, at),
        }
    }
}

fn first_packet(config: Config) -> Vec<u8> {
    drain(&mut Protocol::new(config, Instant::now()).unwrap())
        .0
        .remove(0)
        .contents
        .to_vec()
}

#[test]
fn a_newcomer_announces_at_once_asking_for_replies() {
    let now = Instant::now();
    let mut p = Protocol::new(config(1), now).unwrap();
    let (t, _, timeout) = drain(&mut p);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].destination, Destination::Group);
    let packet = wire::decode(&t[0].contents).unwrap();
    assert!(matches!(
        packet.message,
        Message::Announce {
            want_reply: true,
            ..
        }
    ));
    assert!(timeout.unwrap() > now);
}

#[test]
fn two_instances_meet_through_a_three_datagram_handshake_whose_last_goes_twice() {
    let mut net = Net::new();
    let a = net.add(config(1));
    net.run(Duration::from_millis(1));
    let b = net.add(config(2));
    net.run(Duration::from_millis(50));
    assert_eq!(net.joined(a), vec![2]);
    assert_eq!(net.joined(b), vec![1]);
    // a challenges b's announcement, b proves itself and challenges back, a
    // answers in full (twice: the second copy covers a loss).
    assert_eq!(net.unicast, vec![(a, b), (b, a), (a, b), (a, b)]);
}

#[test]
fn an_unproven_announcement_is_answered_with_a_small_challenge_only() {
    let now = Instant::now();
    let mut b = Protocol::new(config(2), now).unwrap();
    drain(&mut b);
    let announce = first_packet(config(1));
    b.handle_datagram(now, addr(1), &announce).unwrap();
    let later = now + MAX_PACING;
    b.handle_timeout(later);
    let (t, events, _) = drain(&mut b);
    assert!(events.is_empty(), "nobody joins before proving its address");
    assert_eq!(t.len(), 1);
    assert!(t[0].contents.len() <= announce.len());
    let challenge = wire::decode(&t[0].contents).unwrap();
    assert!(challenge.cookie.is_some());
    assert!(matches!(challenge.message, Message::Query { .. }));
    assert_eq!(b.pending_count(), 1);
}

#[test]
fn outputs_come_transmits_first_then_changes_then_the_timeout() {
    let now = Instant::now();
    let mut a = Protocol::new(config(1), now).unwrap();
    let mut b = Protocol::new(config(2), now).unwrap();
    let announce = drain(&mut a).0.remove(0);
    drain(&mut b);
    b.handle_datagram(now, addr(1), &announce.contents).unwrap();
    b.handle_timeout(now + MAX_PACING);
    let challenge = drain(&mut b).0.remove(0);
    a.handle_datagram(now, addr(2), &challenge.contents)
        .unwrap();
    let confirm = drain(&mut a).0.remove(0);
    // The proof completes the handshake: b answers and reports the join.
    b.handle_datagram(now, addr(1), &confirm.contents).unwrap();
    assert!(matches!(b.poll_output(), Output::Transmit(_)));
    assert!(matches!(b.poll_output(), Output::Change(Change::Joined(_))));
    assert!(matches!(b.poll_output(), Output::Timeout(Some(_))));
}

#[test]
fn the_announce_gap_backs_off_to_the_maximum() {
    let start_at = Instant::now();
    let mut p = Protocol::new(config(1), start_at).unwrap();
    let mut now = start_at;
    let mut gaps = Vec::new();
    for _ in 0..12 {
        let next = drain(&mut p).2.unwrap();
        gaps.push(next - now);
        now = next;
        p.handle_timeout(now);
    }
    assert!(gaps[0] < Duration::from_millis(121));
    assert!(gaps.windows(2).take(5).all(|w| w[1] > w[0]), "{gaps:?}");
    let max = Schedule::default().max_interval;
    assert!(gaps.iter().all(|g| *g <= max.mul_f64(1.2)), "{gaps:?}");
    assert!(gaps[11] >= max.mul_f64(0.8), "{gaps:?}");
}

#[test]
fn a_payload_change_is_queued_at_once_and_restarts_the_doubling() {
    let t0 = Instant::now();
    let mut p = Protocol::new(config(1), t0).unwrap();
    let mut now = t0;
    for _ in 0..8 {
        now = drain(&mut p).2.unwrap();
        p.handle_timeout(now);
    }
    drain(&mut p);
    p.set_payload(now, vec![42]);
    let (t, _, next) = drain(&mut p);
    assert_eq!(t.len(), 1, "the change goes out before the driver sleeps");
    let packet = wire::decode(&t[0].contents).unwrap();
    assert!(matches!(packet.message, Message::Announce { info, .. } if info.payload == [42]));
    assert!(next.unwrap() - now <= Duration::from_millis(120));
}

#[test]
fn open_announcements_are_encoded_once_per_change_not_per_send() {
    let t0 = Instant::now();
    let mut p = Protocol::new(config(1), t0).unwrap();
    let mut sent = Vec::new();
    for _ in 0..12 {
        let (t, _, next) = drain(&mut p);
        sent.extend(t);
        p.handle_timeout(next.unwrap());
    }
    // Once settled, every plain announcement shares one buffer.
    let settled = (Schedule::default().eager_announcements + announcer::SETTLING) as usize;
    let plain: Vec<_> = sent[settled..]
        .iter()
        .map(|t| t.contents.as_ptr())
        .collect();
    assert!(plain.len() >= 4);
    assert!(plain.windows(2).all(|w| w[0] == w[1]), "{plain:?}");
}

#[test]
fn late_packets_from_an_older_incarnation_are_ignored() {
    let mut net = Net::new();
    let a = net.add(config(1));
    net.add(Config {
        incarnation: 10,
        ..config(2)
    });
    net.run(Duration::from_millis(50));
    let old = first_packet(Config {
        incarnation: 9,
        ..config(2)
    });
    let now = net.now;
    assert_eq!(
        net.nodes[a].0.handle_datagram(now, addr(2), &old),
        Err(Rejected::StaleIncarnation { id: 2 })
    );
    assert_eq!(net.nodes[a].0.peer(2).unwrap().incarnation, 10);
    assert_eq!(net.nodes[a].0.stats().dropped_stale, 1);
}

#[test]
fn a_sniffer_learns_everyone_but_never_announces_or_joins_a_chart() {
    let mut net = Net::new();
    let a = net.add(config(1));
    net.run(Duration::from_millis(50));
    let s = net.add(Config {
        mode: Mode::Sniff,
        ..config(9)
    });
    net.run(Duration::from_secs(5));
    assert_eq!(net.joined(s), vec![1]);
    assert!(net.joined(a).is_empty(), "a querier never joins a chart");
    assert_eq!(net.nodes[a].0.peer_count(), 0);
}

#[test]
fn a_goodbye_with_its_secret_removes_the_peer_and_a_forged_one_does_not() {
    let mut net = Net::new();
    let a = net.add(config(1));
    let b = net.add(config(2));
    net.run(Duration::from_millis(50));
    // A forger who knows b's id and incarnation, not its secret.
    let forged = wire::encode(&Packet {
        namespace: "test",
        sender: 2,
        incarnation: 1,
        seq: 0,
        sent_ms: 0,
        reply_port: 5002,
        cookie: None,
        echo: None,
        message: Message::Goodbye { proof: [7; 16] },
        pad: &[],
    });
    let now = net.now;
    assert_eq!(
        net.nodes[a].0.handle_datagram(now, addr(2), &forged),
        Err(Rejected::UnprovenGoodbye { id: 2 })
    );
    assert_eq!(net.nodes[a].0.peer_count(), 1);
    net.nodes[b].0.close(net.now);
    net.flush(b);
    net.run(Duration::from_millis(1));
    assert_eq!(net.nodes[a].0.peer_count(), 0);
    assert!(net.changes[a].contains(&Change::Left {
        id: 2,
        reason: LeftReason::Goodbye
    }));
}

#[test]
fn forget_is_a_departure_reported_by_the_protocol_itself() {
    let mut net = Net::new();
    let a = net.add(config(1));
    net.add(config(2));
    net.run(Duration::from_millis(50));
    assert!(net.nodes[a].0.forget(2));
    assert!(!net.nodes[a].0.forget(2));
    net.flush(a);
    assert_eq!(
        net.changes[a].last(),
        Some(&Change::Left {
            id: 2,
            reason: LeftReason::Forgotten
        })
    );
    assert_eq!(net.nodes[a].0.stats().left_forgotten, 1);
}

#[test]
fn packets_from_another_namespace_change_nothing() {
    let now = Instant::now();
    let mut a = Protocol::new(config(1), now).unwrap();
    let foreign = first_packet(Config {
        namespace: "other".into(),
        ..config(2)
    });
    drain(&mut a);
    assert_eq!(
        a.handle_datagram(now, addr(2), &foreign),
        Err(Rejected::ForeignNamespace)
    );
    let (t, e, _) = drain(&mut a);
    assert!(a.peer_count() == 0 && t.is_empty() && e.is_empty());
}

#[test]
fn a_peer_whose_payload_is_refused_never_joins_and_is_counted() {
    let mut net = Net::new();
    let a = net.add(Config {
        accept_payload: |p| p.len() == 1,
        ..config(1)
    });
    net.add(Config {
        payload: vec![1, 2, 3],
        ..config(2)
    });
    net.run(Duration::from_millis(50));
    assert!(net.joined(a).is_empty());
    assert!(net.nodes[a].0.stats().dropped_undecodable_payload >= 1);
}

#[test]
fn a_peer_announcing_a_shorter_ttl_is_evicted_by_the_shorter_ttl() {
    let mut net = Net::new();
    let a = net.add(config(1));
    let long = Schedule {
        max_interval: Duration::from_secs(5),
        ttl: Duration::from_secs(29),
        ..Schedule::default()
    };
    let b = net.add(Config {
        schedule: long,
        ..config(2)
    });
    net.run(Duration::from_millis(50));
    assert_eq!(net.nodes[a].0.peer(2).unwrap().ttl(), long.ttl);
    // b restarts its schedule with a short TTL, then falls silent.
    let short = Schedule {
        max_interval: Duration::from_millis(100),
        ttl: Duration::from_millis(300),
        ..Schedule::default()
    };
    let announce = first_packet(Config {
        schedule: short,
        ..config(2)
    });
    net.nodes.remove(b);
    let (now, from) = (net.now, addr(2));
    net.nodes[a]
        .0
        .handle_datagram(now, from, &announce)
        .unwrap();
    net.flush(a);
    net.queue.clear();
    let silent_from = net.now;
    net.run(Duration::from_secs(2));
    let left = net.changes[a].iter().any(|c| {
        *c == Change::Left {
            id: 2,
            reason: LeftReason::Expired,
        }
    });
    assert!(left, "{:?}", net.changes[a]);
    let _ = silent_from;
}

#[test]
fn a_config_that_cannot_work_is_an_error_not_a_busy_loop() {
    let now = Instant::now();
    let zero = Config {
        schedule: Schedule {
            first_interval: Duration::ZERO,
            ..Schedule::default()
        },
        ..Config::default()
    };
    assert!(matches!(
        Protocol::new(zero, now),
        Err(ConfigError::Schedule(_))
    ));
    let long = Config {
        namespace: "x".repeat(MAX_NAMESPACE + 1),
        ..Config::default()
    };
    assert!(matches!(
        Protocol::new(long, now),
        Err(ConfigError::NamespaceTooLong { .. })
    ));
    let big = Config {
        payload: vec![0; MAX_DATAGRAM],
        ..Config::default()
    };
    assert!(matches!(
        Protocol::new(big, now),
        Err(ConfigError::PayloadTooLarge { .. })
    ));
}

#[test]
fn sealed_instances_meet_in_one_round_trip_and_ignore_open_ones() {
    let keys = || Some(wire::seal::KeyRing::new(Key::derive(&[5; 32])));
    let mut net = Net::new();
    let a = net.add(Config {
        keys: keys(),
        ..config(1)
    });
    net.run(Duration::from_millis(1));
    let b = net.add(Config {
        keys: keys(),
        ..config(2)
    });
    let open = net.add(config(3));
    net.run(Duration::from_millis(50));
    assert_eq!(net.joined(a), vec![2]);
    assert_eq!(net.joined(b), vec![1]);
    assert!(net.joined(open).is_empty());
    // No validation needed: a's one reply to b.
    assert_eq!(net.unicast, vec![(a, b)]);
    assert!(net.nodes[a].0.stats().dropped_wrong_mode > 0);
}
