//! Port helpers: 64 concurrent `find_free_port` calls on one range never
//! return the same port (each gets a bound listener, not a number), and
//! `is_port_in_use` sees a listener.
//!
//! Loopback only. Run inside a private network namespace:
//! `scripts/isolated cargo test --offline --test local_ports`.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

use cohort::local::{find_free_port, is_port_in_use};

const CALLERS: usize = 64;

#[test]
fn sixty_four_concurrent_calls_on_one_range_never_return_the_same_port() {
    let range = 42000..=42127;
    let start = Arc::new(Barrier::new(CALLERS));
    // Every listener is kept until all calls returned, so a port can only be
    // handed out twice if two binds succeeded at once.
    let done = Arc::new(Barrier::new(CALLERS + 1));
    let (tx, rx) = std::sync::mpsc::channel();
    let threads: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (start, done, tx, range) = (start.clone(), done.clone(), tx.clone(), range.clone());
            std::thread::spawn(move || {
                start.wait();
                let listener = find_free_port(range).unwrap();
                tx.send(listener.local_addr().unwrap().port()).unwrap();
                done.wait();
                drop(listener);
            })
        })
        .collect();
    drop(tx);
    let ports: Vec<u16> = rx.iter().take(CALLERS).collect();
    done.wait();
    for t in threads {
        t.join().unwrap();
    }
    let distinct: BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), CALLERS, "ports handed out twice: {ports:?}");
    assert!(ports.iter().all(|p| range.contains(p)));
}

#[test]
fn a_full_range_is_an_error_and_a_listener_is_seen_as_in_use() {
    let listener = find_free_port(43000..=43000).unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(is_port_in_use(port));
    let err = find_free_port(port..=port).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    drop(listener);
    assert!(!is_port_in_use(port));
}
