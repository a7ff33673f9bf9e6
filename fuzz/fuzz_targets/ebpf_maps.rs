//! The eBPF map content the programmer writes, checked against an in-memory store: every
//! frontend's group has its slots and the UDP backends read back are the plan's; the first
//! programming, and an incremental update on top of it, hold what the plan renders to from
//! scratch (group ids aside); a restarted agent that reads the maps back (group ids from the
//! store, none remembered) writes nothing; and a resync after the update finds nothing to do.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::fuzz_target;
use sluice_dp_ebpf::abi::{self, MAGLEV_M, SlotKey};
use sluice_dp_ebpf::render::{MapContent, render_plan};
use sluice_dp_ebpf::store::FakeMapStore;
use sluice_dp_ebpf::{MapProgrammer, MapSizes, connectionless_backends};
use sluice_fuzz::ClusterInput;
use sluice_plan::{Plan, Protocol};

/// `c` with its group ids renumbered in the order the frontends (sorted by key) first use
/// them, so that two histories that hand out different ids compare equal. A row of a group
/// no frontend uses is a leak.
fn canonical(c: &MapContent) -> MapContent {
    let mut ids: BTreeMap<u32, u32> = BTreeMap::new();
    for v in c.svc.values() {
        let next = ids.len() as u32;
        ids.entry(v.group).or_insert(next);
    }
    let id = |group: u32| -> u32 {
        *ids.get(&group)
            .unwrap_or_else(|| panic!("rows of group {group}, which no frontend uses"))
    };
    let slots = |m: &BTreeMap<SlotKey, abi::Backend>| -> BTreeMap<SlotKey, abi::Backend> {
        m.iter()
            .map(|(k, b)| {
                let key = SlotKey {
                    group: id(k.group),
                    slot: k.slot,
                };
                (key, *b)
            })
            .collect()
    };
    let mut out = c.clone();
    for v in out.svc.values_mut() {
        v.group = id(v.group);
    }
    out.slot = slots(&c.slot);
    out.maglev = slots(&c.maglev);
    out.src = c
        .src
        .iter()
        .map(|k| abi::SrcKey {
            group: id(k.group),
            ..*k
        })
        .collect();
    out
}

fn check_content(plan: &Plan, c: &MapContent) {
    for (key, val) in &c.svc {
        if val.count == 0 {
            continue;
        }
        if val.flags & abi::SVC_MAGLEV != 0 {
            for slot in 0..MAGLEV_M {
                let k = abi::SlotKey {
                    group: val.group,
                    slot,
                };
                assert!(
                    c.maglev.contains_key(&k),
                    "maglev group {} misses slot {slot} ({key:?})",
                    val.group
                );
            }
        } else {
            for slot in 0..u32::from(val.count) {
                let k = abi::SlotKey {
                    group: val.group,
                    slot,
                };
                assert!(
                    c.slot.contains_key(&k),
                    "group {} misses slot {slot} of {} ({key:?})",
                    val.group,
                    val.count
                );
            }
        }
    }
    let udp_backends: BTreeSet<(std::net::IpAddr, u16)> = plan
        .services
        .values()
        .filter(|s| s.name.protocol == Protocol::Udp)
        .flat_map(|s| s.all_backends())
        .map(|b| (b.ip, b.port))
        .collect();
    for (proto, ip, port) in connectionless_backends(c) {
        assert_eq!(proto, Protocol::Udp);
        assert!(
            udp_backends.contains(&(ip, port)),
            "read back {ip}:{port}, not a UDP backend of the plan"
        );
    }
}

fuzz_target!(|input: ClusterInput| {
    let g = input.generate();
    let (first, second, delta) = sluice_fuzz::plan_both(&g);
    let mut store = FakeMapStore::new();
    let mut programmer = MapProgrammer::new(MapSizes::default());
    programmer
        .resync(&mut store, &first)
        .expect("the in-memory store never fails");
    let content = store.content();
    check_content(&first, &content);
    assert_eq!(
        canonical(&content),
        canonical(&render_plan(&first)),
        "the first programming holds the plan"
    );

    // Restart: group ids come from the maps only, and nothing is rewritten.
    let mut restarted = MapProgrammer::new(MapSizes::default());
    restarted.restore(&mut store).expect("restore");
    let attempts = store.attempts();
    let report = restarted.resync(&mut store, &first).expect("resync");
    assert_eq!(
        (report.operations, store.attempts()),
        (0, attempts),
        "a restart rewrites nothing"
    );
    assert_eq!(store.content(), content);

    // Update: only the delta is applied, and the maps hold the second plan.
    programmer.apply(&mut store, &delta).expect("apply");
    let next = store.content();
    check_content(&second, &next);
    assert_eq!(
        canonical(&next),
        canonical(&render_plan(&second)),
        "an incremental update holds the plan from scratch"
    );
    let attempts = store.attempts();
    let report = programmer.resync(&mut store, &second).expect("resync");
    assert_eq!(
        (report.operations, store.attempts()),
        (0, attempts),
        "a resync after the update finds nothing to do"
    );
});
