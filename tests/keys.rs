//! Charts with a secret, on real sockets: only instances with the same key
//! meet, payloads are unreadable on the wire, and a key is rotated while
//! running without a restart and without a gap. Run inside a private
//! network namespace (`scripts/test`).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use cohort::{ChartBuilder, Event, discovery};
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(10);
const K1: &[u8] = b"first secret, 32 bytes long!!!!!";
const K2: &[u8] = b"second secret, also 32 bytes!!!!";

fn builder(port: u16, id: u64) -> ChartBuilder<cohort::builder::WithId> {
    ChartBuilder::new()
        .with_id(id)
        .with_discovery_port(port)
        .with_namespace("keys-test")
        .local_discovery(true)
        .loopback_only()
}

#[tokio::test]
async fn only_instances_with_the_same_key_meet() {
    let port = 47941;
    let a = builder(port, 1)
        .with_secret(K1)
        .with_service_port(1)
        .finish()
        .unwrap();
    let b = builder(port, 2)
        .with_secret(K1)
        .with_service_port(2)
        .finish()
        .unwrap();
    let other = builder(port, 3)
        .with_secret(K2)
        .with_service_port(3)
        .finish()
        .unwrap();
    let open = builder(port, 4).with_service_port(4).finish().unwrap();
    let _d: Vec<_> = [&a, &b, &other, &open]
        .iter()
        .map(|c| discovery::spawn(c).unwrap())
        .collect();
    timeout(BOUND, discovery::found_everyone(&a, 2))
        .await
        .unwrap();
    timeout(BOUND, discovery::found_everyone(&b, 2))
        .await
        .unwrap();
    // The others have seen (and dropped) a's and b's sealed packets.
    timeout(BOUND, async {
        while other.stats().protocol.dropped_unknown_key == 0
            || open.stats().protocol.dropped_wrong_mode == 0
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the other charts never heard the sealed ones");
    assert_eq!(a.size(), 2, "a sees only b");
    assert_eq!(other.size(), 1, "another key sees nobody");
    assert_eq!(open.size(), 1, "no key sees nobody");
    assert!(a.stats().protocol.dropped_unknown_key > 0);
    assert!(a.stats().protocol.dropped_wrong_mode > 0);
}

#[tokio::test]
async fn a_sealed_payload_is_unreadable_on_the_wire() {
    let port = 47942;
    let marker = "very-secret-payload-marker".to_string();
    let a = builder(port, 1)
        .with_secret(K1)
        .custom_msg(marker.clone())
        .finish()
        .unwrap();
    // A listener on the group, as any host on the LAN could run.
    let sniffer = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    sniffer.set_reuse_address(true).unwrap();
    sniffer.set_reuse_port(true).unwrap();
    let group = cohort::builder::DEFAULT_GROUP;
    sniffer
        .bind(&SocketAddr::from((group, port)).into())
        .unwrap();
    sniffer
        .join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)
        .unwrap();
    let sniffer: UdpSocket = sniffer.into();
    sniffer.set_read_timeout(Some(BOUND)).unwrap();
    let _d = discovery::spawn(&a).unwrap();
    let mut buf = [0u8; 9000];
    let n = tokio::task::spawn_blocking(move || sniffer.recv(&mut buf).map(|n| buf[..n].to_vec()))
        .await
        .unwrap()
        .expect("an announcement was sent");
    assert!(n.len() > marker.len());
    assert!(
        !n.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the payload is readable"
    );
    assert_eq!(n[5], cohort::wire::MODE_SEALED);
}

#[tokio::test]
async fn a_key_is_rotated_while_running_without_a_gap() {
    let port = 47943;
    let a = builder(port, 1)
        .with_secret(K1)
        .with_service_port(1)
        .finish()
        .unwrap();
    let b = builder(port, 2)
        .with_secret(K1)
        .with_service_port(2)
        .finish()
        .unwrap();
    let mut a_events = a.subscribe();
    let _da = discovery::spawn(&a).unwrap();
    let _db = discovery::spawn(&b).unwrap();
    timeout(BOUND, discovery::found_everyone(&a, 2))
        .await
        .unwrap();
    timeout(BOUND, discovery::found_everyone(&b, 2))
        .await
        .unwrap();
    // The three steps, each on every instance before the next; after each,
    // a payload change from b must reach a (it travels sealed with b's
    // current key).
    let steps: [(&[u8], Option<&[u8]>); 3] = [(K1, Some(K2)), (K2, Some(K1)), (K2, None)];
    for (step, (current, next)) in steps.into_iter().enumerate() {
        a.set_secret(current, next).unwrap();
        b.set_secret(current, next).unwrap();
        let port = 100 + step as u16;
        b.set_service_port(port);
        loop {
            match timeout(BOUND, a_events.recv())
                .await
                .expect("no update after a key step")
            {
                Ok(Event::Updated(e)) if e.id == 2 && e.msg == port => break,
                Ok(Event::Left { id, reason }) => {
                    panic!("step {step}: {id} left ({reason}): a gap")
                }
                _ => {}
            }
        }
    }
    assert_eq!(a.size(), 2);
    assert_eq!(a.stats().protocol.left_expired, 0);
}

#[test]
fn a_short_secret_is_refused() {
    let err = builder(47944, 1)
        .with_secret(b"short")
        .with_service_port(1)
        .finish()
        .unwrap_err();
    assert!(err.to_string().contains("at least 16"), "{err}");
}
