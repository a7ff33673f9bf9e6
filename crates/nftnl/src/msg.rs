//! Writing netlink messages: one [`Batch`] (`BATCH_BEGIN` … `BATCH_END`, applied by the kernel
//! as one atomic transaction) of nf_tables messages, each a header, an `nfgenmsg` and
//! attributes written through [`Attrs`].

use crate::consts::{
    NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NFPROTO_UNSPEC,
};
use netlink_packet_core::{NLA_F_NESTED, NLM_F_REQUEST};

/// The `nfgenmsg` after every nf_tables message header.
pub const NFGENMSG_LEN: usize = 4;

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// Appends one netlink message header + `nfgenmsg` to `buf`; the length is patched by
/// [`finish_message`].
fn start_message(buf: &mut Vec<u8>, msg_type: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched later
    buf.extend_from_slice(&msg_type.to_ne_bytes());
    buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    buf.push(family);
    buf.push(0); // NFNETLINK_V0
    buf.extend_from_slice(&res_id.to_be_bytes());
}

fn finish_message(buf: &mut [u8], start: usize) {
    let len = u32::try_from(buf.len() - start).expect("netlink message below 4 GiB");
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// A single request outside a batch (a `GET` or a dump), as bytes.
pub fn request(
    msg: u8,
    flags: u16,
    seq: u32,
    family: u8,
    attrs: impl FnOnce(&mut Attrs<'_>),
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    start_message(&mut buf, nft_type(msg), flags, seq, family, 0);
    attrs(&mut Attrs { buf: &mut buf });
    finish_message(&mut buf, 0);
    buf
}

/// The netlink message type of an nf_tables message.
pub fn nft_type(msg: u8) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg)
}

/// A transaction being written. Every message gets its own sequence number, so an error the
/// kernel reports can be traced back to the message (and the command) that caused it.
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    first_seq: u32,
    next_seq: u32,
}

impl Batch {
    /// A batch whose `BATCH_BEGIN` carries `first_seq`; messages follow with the next numbers.
    pub fn new(first_seq: u32) -> Self {
        let mut buf = Vec::with_capacity(4096);
        start_message(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            0,
            first_seq,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        finish_message(&mut buf, 0);
        Self {
            buf,
            first_seq,
            next_seq: first_seq.wrapping_add(1),
        }
    }

    /// Appends one nf_tables message (`msg` is an `NFT_MSG_*` number) and returns its sequence
    /// number.
    pub fn message(
        &mut self,
        msg: u8,
        family: u8,
        flags: u16,
        attrs: impl FnOnce(&mut Attrs<'_>),
    ) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let start = self.buf.len();
        start_message(&mut self.buf, nft_type(msg), flags, seq, family, 0);
        attrs(&mut Attrs { buf: &mut self.buf });
        finish_message(&mut self.buf, start);
        seq
    }

    /// The sequence number the next message will get (unique in the batch: usable as the
    /// `NFTA_SET_ID` the kernel wants with every new set).
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Number of nf_tables messages written so far.
    pub fn len(&self) -> usize {
        self.next_seq.wrapping_sub(self.first_seq) as usize - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sequence numbers used: `BATCH_BEGIN` .. `BATCH_END` inclusive (after [`Batch::finish`]).
    pub fn first_seq(&self) -> u32 {
        self.first_seq
    }

    /// Closes the batch with `BATCH_END`; returns the bytes and the last sequence number used.
    pub fn finish(mut self) -> (Vec<u8>, u32) {
        let start = self.buf.len();
        let seq = self.next_seq;
        start_message(
            &mut self.buf,
            NFNL_MSG_BATCH_END,
            0,
            seq,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        finish_message(&mut self.buf, start);
        (self.buf, seq)
    }
}

/// Writes the attributes of one message (or of one nested attribute).
#[derive(Debug)]
pub struct Attrs<'a> {
    buf: &'a mut Vec<u8>,
}

impl Attrs<'_> {
    /// One attribute with a raw value (padded to 4 bytes).
    pub fn bytes(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + value.len()).expect("attribute below 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// A NUL-terminated string (names).
    pub fn str(&mut self, kind: u16, value: &str) -> &mut Self {
        let len = u16::try_from(4 + value.len() + 1).expect("name below 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// A 32-bit number in network byte order (nf_tables' convention for numbers).
    pub fn u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.bytes(kind, &value.to_be_bytes())
    }

    pub fn i32(&mut self, kind: u16, value: i32) -> &mut Self {
        self.bytes(kind, &value.to_be_bytes())
    }

    pub fn u64(&mut self, kind: u16, value: u64) -> &mut Self {
        self.bytes(kind, &value.to_be_bytes())
    }

    pub fn u8(&mut self, kind: u16, value: u8) -> &mut Self {
        self.bytes(kind, &[value])
    }

    /// A nested attribute whose content `inner` writes.
    pub fn nest(&mut self, kind: u16, inner: impl FnOnce(&mut Attrs<'_>)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        inner(&mut Attrs { buf: self.buf });
        let len = u16::try_from(self.buf.len() - start).expect("nested attribute below 64 KiB");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::Attrs;

    pub fn attrs(buf: &mut Vec<u8>, f: impl FnOnce(&mut Attrs<'_>)) {
        f(&mut Attrs { buf });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{NFPROTO_IPV4, msg, table};

    #[test]
    fn a_batch_is_begin_messages_end_with_consecutive_sequence_numbers() {
        let mut batch = Batch::new(7);
        let seq = batch.message(msg::NEWTABLE, NFPROTO_IPV4, 0, |a| {
            a.str(table::NAME, "sluice").u32(table::FLAGS, 0);
        });
        assert_eq!(seq, 8);
        assert_eq!(batch.len(), 1);
        let (bytes, end) = batch.finish();
        assert_eq!(end, 9);
        // BEGIN: 20 bytes, type 16, res_id 10 (big-endian) in the nfgenmsg.
        assert_eq!(&bytes[0..4], &20u32.to_ne_bytes());
        assert_eq!(&bytes[4..6], &16u16.to_ne_bytes());
        assert_eq!(&bytes[16..20], &[0, 0, 0, 10]);
        // NEWTABLE: header + nfgenmsg + "sluice\0" (11, padded to 12) + flags (8) = 40.
        let table = &bytes[20..60];
        assert_eq!(&table[0..4], &40u32.to_ne_bytes());
        assert_eq!(&table[4..6], &nft_type(msg::NEWTABLE).to_ne_bytes());
        assert_eq!(nft_type(msg::NEWTABLE), 10 << 8);
        assert_eq!(&table[8..12], &8u32.to_ne_bytes());
        assert_eq!(table[16], NFPROTO_IPV4);
        assert_eq!(&table[20..22], &11u16.to_ne_bytes());
        assert_eq!(&table[24..31], b"sluice\0");
        assert_eq!(&table[36..40], &[0, 0, 0, 0]);
        // END.
        assert_eq!(&bytes[64..66], &17u16.to_ne_bytes());
        assert_eq!(bytes.len(), 80);
    }

    #[test]
    fn nested_attributes_carry_their_total_length_and_the_nested_flag() {
        let mut buf = Vec::new();
        Attrs { buf: &mut buf }.nest(4, |a| {
            a.u32(1, 3).u32(2, 0xffff_ff9c);
        });
        assert_eq!(&buf[0..2], &20u16.to_ne_bytes());
        assert_eq!(&buf[2..4], &(4 | NLA_F_NESTED).to_ne_bytes());
        assert_eq!(&buf[8..12], &[0, 0, 0, 3]);
        assert_eq!(&buf[16..20], &[0xff, 0xff, 0xff, 0x9c]);
    }
}
