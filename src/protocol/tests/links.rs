//! Unit tests of what the protocol does about the network under it:
//! interfaces that vanish, seeds, peers with several addresses.

use super::*;

#[test]
fn a_peer_heard_only_on_a_vanished_interface_is_probed_at_once_and_leaves_within_a_tenth_of_its_ttl()
 {
    let mut net = Net::new();
    let a = net.add(config(1));
    net.via[a] = Some(7);
    let b = net.add(config(2));
    net.run(Duration::from_millis(100));
    assert_eq!(net.joined(a), vec![2]);
    let ttl = net.nodes[a].0.peer(2).unwrap().ttl();
    // The interface goes, and b with it.
    net.cut[b] = true;
    let gone = net.now;
    net.nodes[a].0.handle_interface_gone(gone, 7);
    let probes_before = net.nodes[a].0.stats().probes_sent;
    net.flush(a);
    net.run(ttl / 10 + Duration::from_millis(10));
    let left = net.changes[a].iter().any(|c| {
        *c == Change::Left {
            id: 2,
            reason: LeftReason::Expired,
        }
    });
    assert!(
        left,
        "b should have left within a tenth of its TTL ({:?})",
        ttl / 10
    );
    assert!(
        net.nodes[a].0.stats().probes_sent > probes_before,
        "b was probed first"
    );
}

#[test]
fn a_peer_that_answers_another_way_after_its_interface_vanished_stays() {
    let mut net = Net::new();
    let a = net.add(config(1));
    net.via[a] = Some(7);
    net.add(config(2));
    net.run(Duration::from_millis(100));
    let ttl = net.nodes[a].0.peer(2).unwrap().ttl();
    net.via[a] = Some(8);
    let gone = net.now;
    net.nodes[a].0.handle_interface_gone(gone, 7);
    net.flush(a);
    net.run(ttl / 5);
    assert!(net.nodes[a].0.peer(2).is_some(), "b answered its probe");
    assert!(
        !net.changes[a]
            .iter()
            .any(|c| matches!(c, Change::Left { .. }))
    );
}

#[test]
fn a_peer_heard_on_two_interfaces_loses_only_the_address_of_the_vanished_one() {
    let mut net = Net::new();
    let a = net.add(config(1));
    net.via[a] = Some(7);
    let b = net.add(config(2));
    net.run(Duration::from_millis(100));
    // b shows up on a second network, at another address, heard on
    // interface 8: it proves that address too.
    let second = SocketAddr::from(([10, 0, 0, 2], 5002));
    net.nodes[b].1 = second;
    net.via[a] = Some(8);
    let now = net.now;
    net.nodes[b].0.set_payload(now, vec![2]);
    net.flush(b);
    net.run(Duration::from_millis(100));
    let addrs = |net: &Net| {
        let peer = net.nodes[a].0.peer(2).unwrap();
        peer.addrs
            .iter()
            .map(|x| (x.addr, x.via))
            .collect::<Vec<_>>()
    };
    assert_eq!(addrs(&net), vec![(addr(2), Some(7)), (second, Some(8))]);
    net.changes[a].clear();
    let now = net.now;
    net.nodes[a].0.handle_interface_gone(now, 7);
    net.flush(a);
    assert_eq!(addrs(&net), vec![(second, Some(8))]);
    assert!(
        matches!(&net.changes[a][..], [Change::Updated(info)] if info.addrs == vec![second] && info.interfaces == vec![Some(8)]),
        "{:?}",
        net.changes[a]
    );
}

#[test]
fn seeds_get_every_announcement_directly_and_a_new_seed_gets_one_at_once() {
    let t0 = Instant::now();
    let mut a = Protocol::new(config(1), t0).unwrap();
    drain(&mut a);
    let seed: SocketAddr = "10.0.0.9:47806".parse().unwrap();
    a.set_seeds(t0, vec![seed, seed]);
    let (t, _, _) = drain(&mut a);
    assert_eq!(t.len(), 1, "one announcement to the new seed");
    assert_eq!(t[0].destination, Destination::Unicast(seed));
    assert!(matches!(
        wire::decode(&t[0].contents).unwrap().message,
        Message::Announce {
            want_reply: true,
            ..
        }
    ));
    // The same set again: nothing new to say.
    a.set_seeds(t0, vec![seed]);
    assert!(drain(&mut a).0.is_empty());
    // The next scheduled announcement goes to the group and to the seed.
    let (_, _, at) = drain(&mut a);
    a.handle_timeout(at.unwrap());
    let to: Vec<Destination> = drain(&mut a).0.into_iter().map(|t| t.destination).collect();
    assert!(
        to.contains(&Destination::Group) && to.contains(&Destination::Unicast(seed)),
        "{to:?}"
    );
    // And so does the goodbye.
    a.close(at.unwrap());
    let to: Vec<Destination> = drain(&mut a).0.into_iter().map(|t| t.destination).collect();
    assert!(
        to.contains(&Destination::Group) && to.contains(&Destination::Unicast(seed)),
        "{to:?}"
    );
}
