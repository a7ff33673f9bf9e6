//! `BPF_PROG_TEST_RUN` of the tc and XDP programs, for packet fixture tests.

use std::os::fd::BorrowedFd;

use crate::kernel::sys;

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value (tc: `TC_ACT_OK` = 0, `TC_ACT_SHOT` = 2,
    /// `TC_ACT_REDIRECT` = 7; XDP: `XDP_DROP` = 1, `XDP_PASS` = 2).
    pub verdict: u32,
    /// The packet after the program ran.
    pub packet: Vec<u8>,
    /// `skb->mark` after the program ran (tc only).
    pub mark: u32,
    /// XDP metadata in front of the packet (XDP only; the programs never resize packets
    /// there, so whatever precedes the frame is metadata).
    pub meta: Vec<u8>,
}

/// Larger than `struct __sk_buff`; the kernel accepts zero tails and copies back its size.
const SKB_CTX_LEN: usize = 256;
const SKB_MARK_OFFSET: usize = 8;

/// Runs a tc program (with an `__sk_buff` context, to read the mark back).
pub fn run_tc(prog: BorrowedFd<'_>, packet: &[u8]) -> std::io::Result<TestRun> {
    let mut out = vec![0u8; packet.len() + 512];
    let mut ctx = [0u8; SKB_CTX_LEN];
    let verdict = sys::prog_test_run(prog, packet, &mut out, Some(&mut ctx))?;
    let mark = u32::from_ne_bytes(
        ctx[SKB_MARK_OFFSET..SKB_MARK_OFFSET + 4]
            .try_into()
            .unwrap_or([0; 4]),
    );
    Ok(TestRun {
        verdict,
        packet: out,
        mark,
        meta: Vec::new(),
    })
}

/// Runs an XDP program; what precedes the frame in the output is metadata.
pub fn run_xdp(prog: BorrowedFd<'_>, packet: &[u8]) -> std::io::Result<TestRun> {
    let mut out = vec![0u8; packet.len() + 512];
    let verdict = sys::prog_test_run(prog, packet, &mut out, None)?;
    let meta_len = out.len().saturating_sub(packet.len());
    let meta = out.drain(..meta_len).collect();
    Ok(TestRun {
        verdict,
        packet: out,
        mark: 0,
        meta,
    })
}
