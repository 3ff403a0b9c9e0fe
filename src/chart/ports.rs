//! What instances carry: service ports or a message of your own, and the
//! address helpers of port charts.
//!
//! **Owns:** the [`Message`] bound, [`Ports`], how a message is encoded and
//! checked, and the typed accessors of `Chart<u16>` and `Chart<Ports<N>>`.
//! **Must not touch:** the view's locking or the driver; it reads entries
//! through the chart.

use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Chart;
use crate::error::PayloadError;
use crate::wire::{self, Id};

/// Anything a chart can carry for each instance: service ports or your own
/// type. Implemented for every type that qualifies.
///
/// Decoding a peer's message uses your type's `Deserialize`; cohort bounds the
/// bytes (one datagram) but your type decides what it allocates from them.
pub trait Message: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Message for T {}

/// The service ports of an instance, for charts built with
/// [`with_service_ports`](crate::ChartBuilder::with_service_ports).
///
/// Encoded as exactly `N` ports, with no length prefix. Indexing gives one
/// port: `ports[1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ports<const N: usize>(pub [u16; N]);

impl<const N: usize> std::ops::Index<usize> for Ports<N> {
    type Output = u16;
    fn index(&self, index: usize) -> &u16 {
        &self.0[index]
    }
}

impl<const N: usize> Serialize for Ports<N> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = serializer.serialize_tuple(N)?;
        for port in &self.0 {
            tuple.serialize_element(port)?;
        }
        tuple.end()
    }
}

impl<'de, const N: usize> serde::Deserialize<'de> for Ports<N> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortsVisitor<const N: usize>;
        impl<'de, const N: usize> serde::de::Visitor<'de> for PortsVisitor<N> {
            type Value = Ports<N>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{N} ports")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Ports<N>, A::Error> {
                let mut ports = [0u16; N];
                for (i, port) in ports.iter_mut().enumerate() {
                    *port = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Ports(ports))
            }
        }
        deserializer.deserialize_tuple(N, PortsVisitor::<N>)
    }
}

/// The payload of an instance of any application, as it travels: for tools
/// that watch cohorts whose message type they do not know (the `cohort`
/// command-line tool).
///
/// A chart of `RawPayload` accepts every peer and hands its payload over
/// undecoded, and announces the bytes it is given as they are (say, the
/// postcard encoding of another application's message). Its `Serialize`
/// and `Deserialize` (as a byte string) are for your own use; cohort never
/// passes it through serde.
///
/// ```
/// use cohort::RawPayload;
/// // What `with_service_port(8042)` announces: a postcard varint.
/// let chart = cohort::ChartBuilder::new()
///     .with_random_id()
///     .custom_msg(RawPayload(vec![0xea, 0x3e]))
///     .finish()?;
/// # Ok::<(), cohort::BuildError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RawPayload(pub Vec<u8>);

impl Serialize for RawPayload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for RawPayload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl serde::de::Visitor<'_> for BytesVisitor {
            type Value = RawPayload;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<RawPayload, E> {
                Ok(RawPayload(v.to_vec()))
            }
        }
        deserializer.deserialize_bytes(BytesVisitor)
    }
}

/// The message as a `RawPayload`, if it is one: a chart of raw payloads
/// bypasses serde both ways.
fn as_raw<M: 'static>(msg: &M) -> Option<&RawPayload> {
    (msg as &dyn std::any::Any).downcast_ref::<RawPayload>()
}

/// Encodes a message and checks that an announcement carrying it fits in
/// one datagram.
pub(crate) fn encode_payload<M: Serialize + 'static>(
    namespace: &str,
    msg: &M,
) -> Result<Vec<u8>, PayloadError> {
    let payload = match as_raw(msg) {
        Some(raw) => raw.0.clone(),
        None => postcard::to_allocvec(msg).map_err(PayloadError::Encode)?,
    };
    // The largest announcement it can ride in: every optional field set,
    // sealed, with the largest filter of known ids.
    let packet = wire::Packet {
        namespace,
        sender: u64::MAX,
        incarnation: u64::MAX,
        seq: u64::MAX,
        sent_ms: u64::MAX,
        reply_port: u16::MAX,
        cookie: Some([0xff; 8]),
        echo: Some([0xff; 8]),
        message: wire::Message::Announce {
            info: wire::Info {
                ttl_ms: u32::MAX,
                process: Some(wire::ProcessTag {
                    boot_id: [0xff; 16],
                    pid_namespace: u64::MAX,
                    pid: u32::MAX,
                    start_time: u64::MAX,
                }),
                commitment: [0xff; 16],
                payload: &payload,
            },
            want_reply: true,
            known: &[0xff; crate::protocol::MAX_FILTER],
        },
        pad: &[],
    };
    let size = wire::body_len(&packet) + wire::seal::SEALED_OVERHEAD;
    if size > wire::MAX_DATAGRAM {
        return Err(PayloadError::TooLarge { size });
    }
    Ok(payload)
}

/// Decodes a peer's payload strictly, like the packet decoder: the whole
/// payload, nothing left over.
pub(crate) fn decode_payload<M: Message>(payload: &[u8]) -> Option<M> {
    if std::any::TypeId::of::<M>() == std::any::TypeId::of::<RawPayload>() {
        let raw: Box<dyn std::any::Any> = Box::new(RawPayload(payload.to_vec()));
        return raw.downcast::<M>().ok().map(|m| *m);
    }
    match postcard::take_from_bytes::<M>(payload) {
        Ok((msg, [])) => Some(msg),
        _ => None,
    }
}

/// [`decode_payload`] as the protocol's acceptance test.
pub(crate) fn payload_decodes<M: Message>(payload: &[u8]) -> bool {
    decode_payload::<M>(payload).is_some()
}

impl Chart<u16> {
    /// Replaces the service port this instance announces; see
    /// [`Chart::set_msg`].
    pub fn set_service_port(&self, port: u16) {
        // A u16 always encodes and always fits.
        let _ = self.set_msg(port);
    }

    /// The service port this instance announces.
    pub fn our_service_port(&self) -> u16 {
        self.our_msg()
    }

    /// Every other instance's service address: its ip and service port.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use cohort::{ChartBuilder, discovery};
    /// let chart = ChartBuilder::new().with_random_id().with_service_port(8042).finish()?;
    /// let _discovery = discovery::spawn(&chart)?;
    /// for (id, addr) in chart.addr_vec() {
    ///     println!("instance {id} serves on {addr}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn addr_vec(&self) -> Vec<(Id, SocketAddr)> {
        self.collect(|e| (e.id, e.best().with_port(e.msg)))
    }

    /// The service address of instance `id`, if known.
    pub fn get_addr(&self, id: Id) -> Option<SocketAddr> {
        self.find(id, |e| e.best().with_port(e.msg))
    }
}

impl<const N: usize> Chart<Ports<N>> {
    /// Replaces the service ports this instance announces; see
    /// [`Chart::set_msg`].
    ///
    /// # Errors
    /// [`PayloadError::TooLarge`] for thousands of ports.
    pub fn set_service_ports(&self, ports: [u16; N]) -> Result<(), PayloadError> {
        self.set_msg(Ports(ports))
    }

    /// The service ports this instance announces.
    pub fn our_service_ports(&self) -> [u16; N] {
        self.our_msg().0
    }

    /// Every other instance's service addresses, one per port, in the order
    /// the ports were given to
    /// [`with_service_ports`](crate::ChartBuilder::with_service_ports).
    pub fn addr_lists_vec(&self) -> Vec<(Id, [SocketAddr; N])> {
        self.collect(|e| (e.id, e.msg.0.map(|port| e.best().with_port(port))))
    }

    /// Every other instance's address for port number `IDX`. An `IDX` out of
    /// range is a compile error.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), cohort::BuildError> {
    /// let chart = cohort::ChartBuilder::new().with_id(1).with_service_ports([8042, 9000]).finish()?;
    /// let metrics: Vec<_> = chart.nth_addr_vec::<1>();
    /// # Ok(()) }
    /// ```
    pub fn nth_addr_vec<const IDX: usize>(&self) -> Vec<(Id, SocketAddr)> {
        const { assert!(IDX < N, "port index out of range for this chart") };
        self.collect(|e| (e.id, e.best().with_port(e.msg.0[IDX])))
    }

    /// The service addresses of instance `id`, if known.
    pub fn get_addr_list(&self, id: Id) -> Option<[SocketAddr; N]> {
        self.find(id, |e| e.msg.0.map(|port| e.best().with_port(port)))
    }

    /// Instance `id`'s address for port number `IDX`, if known. An `IDX` out
    /// of range is a compile error.
    pub fn get_nth_addr<const IDX: usize>(&self, id: Id) -> Option<SocketAddr> {
        const { assert!(IDX < N, "port index out of range for this chart") };
        self.find(id, |e| e.best().with_port(e.msg.0[IDX]))
    }
}
