//! A `NETLINK_NETFILTER` socket: commits batches (and tells which messages the kernel
//! refused), reads the ruleset generation, and dumps objects.
//!
//! The kernel processes a batch synchronously inside `sendmsg`: by the time it returns, every
//! error is queued on the socket. Messages carry no `NLM_F_ACK` (as `nft` sends them), so a
//! successful transaction produces no reply at all; the generation read right after the batch
//! serves as the end marker.

use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{NLA_TYPE_MASK, NLM_F_DUMP, NLM_F_DUMP_INTR, NetlinkBuffer};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::consts::{NFPROTO_UNSPEC, generation, msg};
use crate::msg::{Batch, NFGENMSG_LEN, request};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `NLM_F_ACK_TLVS` on an error message: extended ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the kernel's explanation (extended ack).
const NLMSGERR_ATTR_MSG: u16 = 1;
/// A dump interrupted by a concurrent change is restarted at most this often.
const DUMP_ATTEMPTS: usize = 5;

/// Why talking to nf_tables failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open a NETLINK_NETFILTER socket")]
    Open {
        #[source]
        source: io::Error,
    },
    #[error("netlink {action} failed")]
    Io {
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("malformed netlink reply: {detail}")]
    Malformed { detail: String },
    #[error("the kernel refused the transaction: {}", refusals_text(.refusals, *.lost))]
    Refused { refusals: Vec<Refusal>, lost: bool },
    #[error("nf_tables {what} failed: {source}")]
    Request {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn refusals_text(refusals: &[Refusal], lost: bool) -> String {
    let mut parts: Vec<String> = refusals.iter().map(Refusal::to_string).collect();
    if lost {
        parts.push("further errors lost (receive buffer full)".into());
    }
    parts.join("; ")
}

/// One message the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Sequence number of the refused message (that of `BATCH_BEGIN` when the commit itself
    /// failed).
    pub seq: u32,
    /// Positive errno.
    pub errno: i32,
    /// The kernel's extended-ack message, when it gave one.
    pub message: Option<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.errno))?;
        if let Some(msg) = &self.message {
            write!(f, " ({msg})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Refusal {}

/// A committed batch: the ruleset generation before and right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    pub before: u32,
    pub after: u32,
}

impl Commit {
    /// The generation this batch produced, when nobody else committed in between (each commit
    /// advances the generation by exactly one).
    pub fn ours(&self) -> Option<u32> {
        (self.after == next_generation(self.before)).then_some(self.after)
    }
}

/// The kernel skips 0 when the generation wraps.
fn next_generation(current: u32) -> u32 {
    match current.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

/// A netlink socket for nf_tables in the calling thread's network namespace.
#[derive(Debug)]
pub struct NfSocket {
    sock: Socket,
    next_seq: u32,
    sndbuf: usize,
}

impl NfSocket {
    pub fn open() -> Result<Self, Error> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|source| Error::Open { source })?;
        sock.bind_auto().map_err(|source| Error::Open { source })?;
        // Errors echo only the header of the refused message, and may explain themselves.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_rx_buf_sz(4i32 << 20);
        Ok(Self {
            sock,
            next_seq: 1,
            sndbuf: 0,
        })
    }

    /// A new batch numbered after everything sent so far.
    pub fn batch(&self) -> Batch {
        Batch::new(self.next_seq)
    }

    fn take_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    fn send(&mut self, bytes: &[u8], action: &'static str) -> Result<(), Error> {
        self.sock
            .send_to(bytes, &SocketAddr::new(0, 0), 0)
            .map(|_| ())
            .map_err(|source| Error::Io { action, source })
    }

    /// One datagram, or `None` when `dontwait` and nothing is queued.
    fn recv(&self, dontwait: bool) -> io::Result<Option<Vec<u8>>> {
        let flags = if dontwait { libc::MSG_DONTWAIT } else { 0 };
        let mut empty: Vec<u8> = Vec::new();
        let size = match self
            .sock
            .recv_from(&mut empty, libc::MSG_PEEK | libc::MSG_TRUNC | flags)
        {
            Ok((size, _)) => size,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = Vec::with_capacity(size.max(1));
        self.sock.recv_from(&mut buf, flags)?;
        Ok(Some(buf))
    }

    /// The current ruleset generation of this network namespace.
    pub fn generation(&mut self) -> Result<u32, Error> {
        let seq = self.take_seq();
        self.send(
            &request(msg::GETGEN, 0, seq, NFPROTO_UNSPEC, |_| {}),
            "generation request",
        )?;
        loop {
            let datagram = self
                .recv(false)
                .map_err(|source| Error::Io {
                    action: "reading the generation",
                    source,
                })?
                .unwrap_or_default();
            for message in messages(&datagram)? {
                if message.seq != seq {
                    continue;
                }
                if let Some(refusal) = message.error()? {
                    return Err(Error::Request {
                        what: "generation request",
                        source: io::Error::from_raw_os_error(refusal.errno),
                    });
                }
                return generation_id(message.payload);
            }
        }
    }

    /// Sends `batch` as one transaction. `Err(Error::Refused)` when the kernel refused it
    /// (then nothing of it applied), naming the refused messages by sequence number.
    pub fn commit(&mut self, batch: Batch) -> Result<Commit, Error> {
        let before = self.generation()?;
        self.drain()?;
        let first = batch.first_seq();
        let (bytes, last) = batch.finish();
        self.next_seq = last.wrapping_add(1);
        self.ensure_sndbuf(bytes.len())?;
        self.send(&bytes, "sending the batch")?;
        let (refusals, lost) = self.collect_refusals(first, last)?;
        let after = self.generation()?;
        if !refusals.is_empty() || lost {
            return Err(Error::Refused { refusals, lost });
        }
        Ok(Commit { before, after })
    }

    /// Discards anything queued (nothing should be).
    fn drain(&mut self) -> Result<(), Error> {
        loop {
            match self.recv(true) {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(source) => {
                    return Err(Error::Io {
                        action: "draining the socket",
                        source,
                    });
                }
            }
        }
    }

    /// The errors the kernel queued for the batch `first..=last`; whether some were lost.
    fn collect_refusals(&mut self, first: u32, last: u32) -> Result<(Vec<Refusal>, bool), Error> {
        let mut refusals = Vec::new();
        let mut lost = false;
        loop {
            let datagram = match self.recv(true) {
                Ok(Some(d)) => d,
                Ok(None) => return Ok((refusals, lost)),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    lost = true;
                    continue;
                }
                Err(source) => {
                    return Err(Error::Io {
                        action: "reading the batch result",
                        source,
                    });
                }
            };
            for message in messages(&datagram)? {
                let ours = message.seq.wrapping_sub(first) <= last.wrapping_sub(first);
                if let (true, Some(refusal)) = (ours, message.error()?) {
                    refusals.push(refusal);
                }
            }
        }
    }

    /// Makes the socket accept a batch of `len` bytes in one `sendmsg` (the kernel needs the
    /// whole batch in one buffer to apply it atomically).
    fn ensure_sndbuf(&mut self, len: usize) -> Result<(), Error> {
        let wanted = len + 64 * 1024;
        if wanted <= self.sndbuf {
            return Ok(());
        }
        let value = libc::c_int::try_from(wanted).unwrap_or(libc::c_int::MAX / 2);
        set_sndbuf_force(&self.sock, value).map_err(|source| Error::Io {
            action: "growing the send buffer (SO_SNDBUFFORCE needs CAP_NET_ADMIN)",
            source,
        })?;
        self.sndbuf = wanted;
        Ok(())
    }

    /// Dumps the objects `msg` (a `GET*` message) lists for `family`, calling `each` with the
    /// attributes (after the `nfgenmsg`) of every object. `filter` writes request attributes
    /// (e.g. a table name). A dump interrupted by a concurrent change is restarted.
    pub fn dump(
        &mut self,
        msg: u8,
        family: u8,
        filter: impl Fn(&mut crate::msg::Attrs<'_>),
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        for _ in 0..DUMP_ATTEMPTS {
            let mut objects: Vec<Vec<u8>> = Vec::new();
            if self.dump_once(msg, family, &filter, &mut objects)? {
                objects.iter().for_each(|o| each(o));
                return Ok(());
            }
        }
        Err(Error::Request {
            what: "dump",
            source: io::Error::other("interrupted by concurrent changes every time"),
        })
    }

    /// One dump attempt; `false` when the kernel flagged it as interrupted.
    fn dump_once(
        &mut self,
        msg: u8,
        family: u8,
        filter: &impl Fn(&mut crate::msg::Attrs<'_>),
        objects: &mut Vec<Vec<u8>>,
    ) -> Result<bool, Error> {
        self.drain()?;
        let seq = self.take_seq();
        self.send(
            &request(msg, NLM_F_DUMP, seq, family, filter),
            "dump request",
        )?;
        let mut complete = true;
        loop {
            let datagram = self
                .recv(false)
                .map_err(|source| Error::Io {
                    action: "reading a dump",
                    source,
                })?
                .unwrap_or_default();
            for message in messages(&datagram)? {
                if message.seq != seq {
                    continue;
                }
                complete &= message.flags & NLM_F_DUMP_INTR == 0;
                match message.kind {
                    NLMSG_DONE => return Ok(complete),
                    NLMSG_ERROR => {
                        if let Some(refusal) = message.error()? {
                            return Err(Error::Request {
                                what: "dump",
                                source: io::Error::from_raw_os_error(refusal.errno),
                            });
                        }
                    }
                    _ => objects.push(message.attributes().to_vec()),
                }
            }
        }
    }
}

#[allow(unsafe_code)]
fn set_sndbuf_force(sock: &Socket, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads exactly `size_of::<c_int>()` bytes from a valid, live c_int,
    // on a file descriptor owned by `sock` for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One netlink message of a received datagram.
#[derive(Debug, Clone, Copy)]
struct Message<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// The attributes of an nf_tables message (after its `nfgenmsg`).
    fn attributes(&self) -> &'a [u8] {
        self.payload.get(NFGENMSG_LEN..).unwrap_or_default()
    }

    /// `Some` for an error message with a non-zero code.
    fn error(&self) -> Result<Option<Refusal>, Error> {
        if self.kind != NLMSG_ERROR {
            return Ok(None);
        }
        let code = self
            .payload
            .get(0..4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| Error::Malformed {
                detail: "short error message".into(),
            })?;
        if code == 0 {
            return Ok(None);
        }
        Ok(Some(Refusal {
            seq: self.seq,
            errno: -code,
            message: self.extended_ack_message(),
        }))
    }

    /// `NLMSGERR_ATTR_MSG` after the echoed header (capped acks echo the header only).
    fn extended_ack_message(&self) -> Option<String> {
        if self.flags & NLM_F_ACK_TLVS == 0 {
            return None;
        }
        let tlvs = self.payload.get(4 + 16..)?;
        attributes(tlvs)
            .find(|(kind, _)| *kind == NLMSGERR_ATTR_MSG)
            .map(|(_, v)| String::from_utf8_lossy(v.strip_suffix(&[0]).unwrap_or(v)).into_owned())
    }
}

/// The messages of one datagram.
fn messages(datagram: &[u8]) -> Result<Vec<Message<'_>>, Error> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let buf = NetlinkBuffer::new_checked(rest).map_err(|e| Error::Malformed {
            detail: e.to_string(),
        })?;
        let len = buf.length() as usize;
        out.push(Message {
            kind: buf.message_type(),
            flags: buf.flags(),
            seq: buf.sequence_number(),
            payload: &rest[16..len],
        });
        rest = rest.get((len + 3) & !3..).unwrap_or_default();
    }
    Ok(out)
}

/// `(type, value)` of each attribute in `bytes` (nested flags stripped); stops at the first
/// malformed one.
pub fn attributes(bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let header = rest.get(0..4)?;
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let kind = u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK;
        let value = rest.get(4..len)?;
        rest = rest.get((len + 3) & !3..).unwrap_or_default();
        Some((kind, value))
    })
}

fn generation_id(payload: &[u8]) -> Result<u32, Error> {
    let attrs = payload.get(NFGENMSG_LEN..).unwrap_or_default();
    attributes(attrs)
        .find(|(kind, _)| *kind == generation::ID)
        .and_then(|(_, v)| v.try_into().ok().map(u32::from_be_bytes))
        .ok_or_else(|| Error::Malformed {
            detail: "generation reply without NFTA_GEN_ID".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generation_after_ours_skips_zero() {
        assert_eq!(
            Commit {
                before: 4,
                after: 5
            }
            .ours(),
            Some(5)
        );
        assert_eq!(
            Commit {
                before: 4,
                after: 6
            }
            .ours(),
            None
        );
        assert_eq!(
            Commit {
                before: u32::MAX,
                after: 1
            }
            .ours(),
            Some(1)
        );
    }

    #[test]
    fn error_messages_name_the_refused_sequence_number_and_errno() {
        // NLMSG_ERROR, seq 9: code -ENOENT, then the echoed header.
        let mut datagram = Vec::new();
        datagram.extend_from_slice(&36u32.to_ne_bytes());
        datagram.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        datagram.extend_from_slice(&0u16.to_ne_bytes());
        datagram.extend_from_slice(&9u32.to_ne_bytes());
        datagram.extend_from_slice(&0u32.to_ne_bytes());
        datagram.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        datagram.extend_from_slice(&[0; 16]);
        let parsed = messages(&datagram).expect("well formed");
        assert_eq!(parsed.len(), 1);
        let refusal = parsed[0].error().expect("decodes").expect("an error");
        assert_eq!(refusal.seq, 9);
        assert_eq!(refusal.errno, libc::ENOENT);
        assert!(refusal.to_string().contains("No such file"), "{refusal}");
    }
}
