//! Batches, refusals, generations and dumps against the real kernel, in a network namespace of
//! the test's own. Needs root (skipped with a message otherwise).

use std::process::Command;

use sluice_nftnl::consts::{NFPROTO_IPV4, chain, msg, table};
use sluice_nftnl::{Error, NfSocket, attributes};

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
        if !root {
            eprintln!("skipped: needs root for network namespaces");
            return None;
        }
        let name = format!("sluice-nftnl-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name}");
        Some(Netns(name))
    }

    /// A socket in this namespace (sockets keep the namespace they were created in).
    fn socket(&self) -> NfSocket {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(path).expect("netns file");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            NfSocket::open().expect("socket")
        })
        .join()
        .expect("socket thread")
    }

    fn nft(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args)
            .output()
            .expect("nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn add_table_and_chain(sock: &NfSocket, name: &str) -> sluice_nftnl::Batch {
    let mut batch = sock.batch();
    batch.message(msg::NEWTABLE, NFPROTO_IPV4, 0, |a| {
        a.str(table::NAME, "t").u32(table::FLAGS, 0);
    });
    batch.message(msg::NEWCHAIN, NFPROTO_IPV4, 0x400, |a| {
        a.str(chain::TABLE, "t").str(chain::NAME, name);
    });
    batch
}

#[test]
fn a_committed_batch_advances_the_generation_by_one_and_shows_in_nft() {
    let Some(ns) = Netns::new("commit") else {
        return;
    };
    let mut sock = ns.socket();
    let before = sock.generation().expect("generation");
    let batch = add_table_and_chain(&sock, "c1");
    let commit = sock.commit(batch).expect("commit");
    assert_eq!(commit.before, before);
    assert_eq!(commit.ours(), Some(before.wrapping_add(1)));
    assert!(ns.nft(&["list", "ruleset"]).contains("chain c1"));

    // Someone else's commit shows as a generation we did not produce.
    ns.nft(&["add", "table", "ip", "other"]);
    assert_eq!(sock.generation().unwrap(), before.wrapping_add(2));
}

#[test]
fn a_refused_batch_names_the_refused_message_and_applies_nothing() {
    let Some(ns) = Netns::new("refuse") else {
        return;
    };
    let mut sock = ns.socket();
    let mut batch = add_table_and_chain(&sock, "c2");
    let bad = batch.message(msg::DELCHAIN, NFPROTO_IPV4, 0, |a| {
        a.str(chain::TABLE, "t").str(chain::NAME, "no-such-chain");
    });
    match sock.commit(batch) {
        Err(Error::Refused { refusals, lost }) => {
            assert!(!lost);
            assert_eq!(refusals.len(), 1, "{refusals:?}");
            assert_eq!(refusals[0].seq, bad);
            assert_eq!(refusals[0].errno, libc::ENOENT);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        !ns.nft(&["list", "ruleset"]).contains("table ip t"),
        "nothing of the batch applied"
    );
}

#[test]
fn a_dump_lists_every_chain_of_the_family() {
    let Some(ns) = Netns::new("dump") else {
        return;
    };
    let mut sock = ns.socket();
    let batch = add_table_and_chain(&sock, "c3");
    sock.commit(batch).expect("commit");
    let mut names = Vec::new();
    sock.dump(
        msg::GETCHAIN,
        NFPROTO_IPV4,
        |_| {},
        |attrs| {
            for (kind, value) in attributes(attrs) {
                if kind == chain::NAME {
                    names.push(
                        String::from_utf8_lossy(value)
                            .trim_end_matches('\0')
                            .to_owned(),
                    );
                }
            }
        },
    )
    .expect("dump");
    assert_eq!(names, vec!["c3"]);
}
