//! Unit tests of the coordinator: how packets are dispatched and answered.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

fn config(id: Id, mode: Mode) -> Config {
    Config {
        id,
        incarnation: 1,
        namespace: "test".into(),
        payload: vec![id as u8],
        seed: id,
        mode,
        reply_port: 5000 + id as u16,
        ..Config::default()
    }
}

fn addr(id: Id) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5000 + id as u16))
}

fn start(id: Id, mode: Mode, now: Instant) -> Protocol {
    Protocol::new(config(id, mode), now).unwrap()
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

#[test]
fn a_newcomer_announces_at_once_asking_for_replies() {
    let now = Instant::now();
    let mut p = start(1, Mode::Announce, now);
    let (t, _, timeout) = drain(&mut p);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].destination, Destination::Group);
    let packet = wire::decode(&t[0].contents).unwrap();
    assert_eq!((packet.kind, packet.want_reply), (Kind::Announce, true));
    assert!(timeout.unwrap() > now);
}

#[test]
fn outputs_come_transmits_first_then_events_then_the_timeout() {
    let now = Instant::now();
    let mut a = start(1, Mode::Announce, now);
    let mut b = start(2, Mode::Announce, now);
    let announce = drain(&mut a).0.remove(0);
    drain(&mut b);
    b.handle_datagram(now, addr(1), &announce.contents).unwrap();
    assert!(matches!(b.poll_output(), Output::Transmit(_)));
    assert!(matches!(b.poll_output(), Output::Change(Change::Joined(_))));
    assert!(matches!(b.poll_output(), Output::Timeout(Some(_))));
}

#[test]
fn an_announcement_is_answered_with_a_unicast_reply_to_the_reply_port() {
    let now = Instant::now();
    let mut a = start(1, Mode::Announce, now);
    let mut b = start(2, Mode::Announce, now);
    let announce = drain(&mut a).0.remove(0);
    drain(&mut b);
    b.handle_datagram(now, addr(1), &announce.contents).unwrap();
    let (replies, events, _) = drain(&mut b);
    assert_eq!(replies[0].destination, Destination::Unicast(addr(1)));
    assert!(matches!(&events[..], [Change::Joined(info)] if info.id == 1));
    a.handle_datagram(now, addr(2), &replies[0].contents)
        .unwrap();
    let (t, events, _) = drain(&mut a);
    assert!(matches!(&events[..], [Change::Joined(info)] if info.id == 2));
    assert!(t.is_empty(), "replies are not answered");
}

#[test]
fn the_announce_gap_backs_off_to_the_maximum() {
    let start_at = Instant::now();
    let mut p = start(1, Mode::Announce, start_at);
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
    let mut p = start(1, Mode::Announce, t0);
    let mut now = t0;
    for _ in 0..8 {
        now = drain(&mut p).2.unwrap();
        p.handle_timeout(now);
    }
    drain(&mut p);
    p.set_payload(now, vec![42]);
    let (t, _, next) = drain(&mut p);
    assert_eq!(t.len(), 1, "the change goes out before the driver sleeps");
    assert_eq!(wire::decode(&t[0].contents).unwrap().payload, &[42]);
    assert!(next.unwrap() - now <= Duration::from_millis(120));
}

#[test]
fn announcements_are_encoded_once_per_change_not_per_send() {
    let t0 = Instant::now();
    let mut p = start(1, Mode::Announce, t0);
    let mut sent = Vec::new();
    for _ in 0..6 {
        let (t, _, next) = drain(&mut p);
        sent.extend(t);
        p.handle_timeout(next.unwrap());
    }
    // After the three eager ones, every plain announcement shares one buffer.
    let plain: Vec<_> = sent[3..].iter().map(|t| t.contents.as_ptr()).collect();
    assert!(plain.windows(2).all(|w| w[0] == w[1]), "{plain:?}");
}

#[test]
fn late_packets_from_an_older_incarnation_are_ignored() {
    let now = Instant::now();
    let mut p = start(1, Mode::Announce, now);
    let new = Config {
        incarnation: 10,
        ..config(2, Mode::Announce)
    };
    let old = Config {
        incarnation: 9,
        ..config(2, Mode::Announce)
    };
    let new_packet = drain(&mut Protocol::new(new, now).unwrap()).0.remove(0);
    let old_packet = drain(&mut Protocol::new(old, now).unwrap()).0.remove(0);
    p.handle_datagram(now, addr(2), &new_packet.contents)
        .unwrap();
    assert_eq!(
        p.handle_datagram(now, addr(2), &old_packet.contents),
        Err(Rejected::StaleIncarnation { id: 2 })
    );
    assert_eq!(p.peer(2).unwrap().incarnation, 10);
    assert_eq!(p.stats().dropped_stale, 1);
}

#[test]
fn a_sniffer_queries_but_never_announces_or_replies() {
    let now = Instant::now();
    let mut s = start(9, Mode::Sniff, now);
    let query = drain(&mut s).0.remove(0);
    assert_eq!(wire::decode(&query.contents).unwrap().kind, Kind::Query);
    let mut a = start(1, Mode::Announce, now);
    let announce = drain(&mut a).0.remove(0);
    s.handle_datagram(now, addr(1), &announce.contents).unwrap();
    let (t, _, _) = drain(&mut s);
    assert!(t.is_empty());
    assert_eq!(s.peer_count(), 1);
    a.handle_datagram(now, addr(9), &query.contents).unwrap();
    let (t, events, _) = drain(&mut a);
    assert!(events.is_empty(), "a querier never joins a chart");
    assert_eq!(t[0].destination, Destination::Unicast(addr(9)));
}

#[test]
fn a_goodbye_removes_the_peer_with_an_event() {
    let now = Instant::now();
    let mut a = start(1, Mode::Announce, now);
    let mut b = start(2, Mode::Announce, now);
    let announce = drain(&mut b).0.remove(0);
    a.handle_datagram(now, addr(2), &announce.contents).unwrap();
    drain(&mut a);
    b.close();
    let (bye, _, timeout) = drain(&mut b);
    assert_eq!(timeout, None, "a closed machine has no timer");
    a.handle_datagram(now, addr(2), &bye[0].contents).unwrap();
    let (_, events, _) = drain(&mut a);
    assert_eq!(a.peer_count(), 0);
    assert_eq!(
        events,
        vec![Change::Left {
            id: 2,
            reason: LeftReason::Goodbye
        }]
    );
}

#[test]
fn forget_is_a_departure_reported_by_the_protocol_itself() {
    let now = Instant::now();
    let mut a = start(1, Mode::Announce, now);
    let mut b = start(2, Mode::Announce, now);
    let announce = drain(&mut b).0.remove(0);
    a.handle_datagram(now, addr(2), &announce.contents).unwrap();
    drain(&mut a);
    assert!(a.forget(2));
    assert!(!a.forget(2));
    let (_, events, _) = drain(&mut a);
    assert_eq!(
        events,
        vec![Change::Left {
            id: 2,
            reason: LeftReason::Forgotten
        }]
    );
    assert_eq!(a.stats().left_forgotten, 1);
    // Its next packet makes it join again.
    a.handle_datagram(now, addr(2), &announce.contents).unwrap();
    assert!(matches!(&drain(&mut a).1[..], [Change::Joined(_)]));
}

#[test]
fn packets_from_another_namespace_change_nothing() {
    let now = Instant::now();
    let mut a = start(1, Mode::Announce, now);
    let other = Config {
        namespace: "other".into(),
        ..config(2, Mode::Announce)
    };
    let foreign = drain(&mut Protocol::new(other, now).unwrap()).0.remove(0);
    drain(&mut a);
    assert_eq!(
        a.handle_datagram(now, addr(2), &foreign.contents),
        Err(Rejected::ForeignNamespace)
    );
    let (t, e, _) = drain(&mut a);
    assert!(a.peer_count() == 0 && t.is_empty() && e.is_empty());
}

#[test]
fn a_peer_whose_payload_is_refused_never_joins_and_is_counted() {
    let now = Instant::now();
    let mut a = Protocol::new(
        Config {
            accept_payload: |p| p.len() == 1,
            ..config(1, Mode::Announce)
        },
        now,
    )
    .unwrap();
    let bad = Config {
        payload: vec![1, 2, 3],
        ..config(2, Mode::Announce)
    };
    let packet = drain(&mut Protocol::new(bad, now).unwrap()).0.remove(0);
    drain(&mut a);
    assert_eq!(
        a.handle_datagram(now, addr(2), &packet.contents),
        Err(Rejected::UndecodablePayload { id: 2 })
    );
    let (t, e, _) = drain(&mut a);
    assert!(a.peer_count() == 0 && t.is_empty() && e.is_empty());
    assert_eq!(a.stats().dropped_undecodable_payload, 1);
}

#[test]
fn a_peer_announcing_a_shorter_ttl_is_evicted_by_the_shorter_ttl() {
    let t0 = Instant::now();
    let mut a = start(1, Mode::Announce, t0);
    let long = Config {
        schedule: Schedule {
            max_interval: Duration::from_secs(5),
            ttl: Duration::from_secs(29),
            ..Schedule::default()
        },
        ..config(2, Mode::Announce)
    };
    let short = Config {
        schedule: Schedule {
            max_interval: Duration::from_millis(100),
            ttl: Duration::from_millis(300),
            ..Schedule::default()
        },
        ..config(2, Mode::Announce)
    };
    let first = drain(&mut Protocol::new(long, t0).unwrap()).0.remove(0);
    let second = drain(&mut Protocol::new(short, t0).unwrap()).0.remove(0);
    a.handle_datagram(t0, addr(2), &first.contents).unwrap();
    a.handle_datagram(t0, addr(2), &second.contents).unwrap();
    // Run a's timers only (peer 2 is silent from now on).
    let mut left_at = None;
    for _ in 0..1000 {
        let (_, events, next) = drain(&mut a);
        if events
            .iter()
            .any(|e| matches!(e, Change::Left { id: 2, .. }))
        {
            break;
        }
        let now = next.unwrap();
        left_at = Some(now);
        a.handle_timeout(now);
    }
    let (_, events, _) = drain(&mut a);
    assert!(events.is_empty() || a.peer_count() == 0);
    assert_eq!(a.peer_count(), 0);
    assert!(
        left_at.unwrap() - t0 <= Duration::from_millis(300),
        "evicted at {:?}",
        left_at.unwrap() - t0
    );
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
