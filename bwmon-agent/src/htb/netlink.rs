//! Netlink batching for the HTB module: many requests per `sendmsg`, each acknowledgement
//! matched back to its request so an error names the operation and the class.

use std::{collections::HashMap, io};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{RouteNetlinkMessage, tc::TcMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tracing::debug;

use super::HtbError;

/// One request in a batch, kept to name it in errors.
pub(super) struct Request {
    /// The operation ("add or change class", "delete class", …).
    pub(crate) op: &'static str,
    /// The class or qdisc, as tc writes it.
    pub(crate) target: String,
    /// The message.
    pub(crate) message: NetlinkMessage<RouteNetlinkMessage>,
}

/// A route netlink socket for one interface's tc objects.
pub(super) struct Netlink {
    iface: String,
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens and connects the socket.
    pub(crate) fn open(iface: &str) -> Result<Self, HtbError> {
        let sock_err = |source| HtbError::Socket {
            iface: iface.to_owned(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(sock_err)?;
        socket.bind_auto().map_err(sock_err)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(sock_err)?;
        let _ = socket.set_ext_ack(true);
        // Acknowledgements without a copy of each request: a batch's acks must fit the
        // receive buffer until they are read.
        socket.set_cap_ack(true).map_err(sock_err)?;
        let _ = socket.set_rx_buf_sz(4 << 20);
        Ok(Self {
            iface: iface.to_owned(),
            socket,
            seq: 0,
        })
    }

    /// A request message with the next sequence number.
    pub(crate) fn request(
        &mut self,
        flags: u16,
        payload: RouteNetlinkMessage,
    ) -> NetlinkMessage<RouteNetlinkMessage> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        msg
    }

    fn sock_err(&self, source: io::Error) -> HtbError {
        HtbError::Socket {
            iface: self.iface.clone(),
            source,
        }
    }

    /// Sends the requests in as few `sendmsg` calls as fit the socket buffer, then reads one
    /// acknowledgement per request. Every request is attempted; the first failure is returned
    /// after all were sent.
    pub(crate) fn send_batch(&mut self, batch: Vec<Request>) -> Result<(), HtbError> {
        // About a hundred requests per sendmsg: the kernel queues one ack (~1 KiB of socket
        // buffer) per request before we read them.
        const CHUNK: usize = 16 * 1024;
        let mut first_error = None;
        let mut start = 0;
        while start < batch.len() {
            let mut buf = Vec::with_capacity(CHUNK);
            let mut pending: HashMap<u32, usize> = HashMap::new();
            let mut end = start;
            while end < batch.len()
                && (buf.is_empty() || buf.len() + batch[end].message.buffer_len() <= CHUNK)
            {
                let m = &batch[end].message;
                let at = buf.len();
                buf.resize(at + m.buffer_len(), 0);
                m.serialize(&mut buf[at..]);
                pending.insert(m.header.sequence_number, end);
                end += 1;
            }
            self.socket.send(&buf, 0).map_err(|e| self.sock_err(e))?;
            while !pending.is_empty() {
                for reply in self.receive()? {
                    let seq = reply.header.sequence_number;
                    let Some(i) = pending.remove(&seq) else {
                        continue;
                    };
                    if let NetlinkPayload::Error(e) = reply.payload
                        && e.code.is_some()
                    {
                        let req = &batch[i];
                        let err = HtbError::Kernel {
                            iface: self.iface.clone(),
                            op: req.op,
                            class: req.target.clone(),
                            source: e.to_io(),
                        };
                        debug!(error = %err, "netlink operation failed");
                        first_error.get_or_insert(err);
                    }
                }
            }
            start = end;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn receive(&mut self) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, HtbError> {
        let mut buf = vec![0u8; 256 * 1024];
        let n = self
            .socket
            .recv(&mut &mut buf[..], 0)
            .map_err(|e| self.sock_err(e))?;
        let mut out = Vec::new();
        let mut at = 0;
        while at < n {
            let msg =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..n]).map_err(|e| {
                    HtbError::Protocol {
                        iface: self.iface.clone(),
                        what: e.to_string(),
                    }
                })?;
            let len = msg.header.length as usize;
            if len == 0 {
                break;
            }
            at += len.next_multiple_of(4);
            out.push(msg);
        }
        Ok(out)
    }

    /// Sends a dump request and collects the tc messages of its reply.
    pub(crate) fn dump(
        &mut self,
        req: NetlinkMessage<RouteNetlinkMessage>,
    ) -> Result<Vec<TcMessage>, HtbError> {
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(|e| self.sock_err(e))?;
        let seq = req.header.sequence_number;
        let mut out = Vec::new();
        loop {
            for msg in self.receive()? {
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(HtbError::Kernel {
                            iface: self.iface.clone(),
                            op: "dump",
                            class: "1:".into(),
                            source: e.to_io(),
                        });
                    }
                    NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewTrafficClass(m)
                        | RouteNetlinkMessage::NewQueueDiscipline(m)
                        | RouteNetlinkMessage::NewTrafficFilter(m),
                    ) => out.push(m),
                    _ => {}
                }
            }
        }
    }
}
