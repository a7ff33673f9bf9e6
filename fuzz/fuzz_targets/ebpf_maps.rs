//! The eBPF map content the plan translates to: rendering never panics; a restarted agent
//! that reads the maps back (group ids from the kernel, none remembered) renders exactly the
//! same content, so it rewrites nothing; an update keeps the ids of unchanged groups, and its
//! diff turns the old content into the new; every frontend's group has its slots; addresses
//! survive the encoding (the UDP backends read back from the maps are the plan's).

#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::fuzz_target;
use sluice_dp_ebpf::abi::{self, MAGLEV_M};
use sluice_dp_ebpf::state::{
    Groups, MapContent, assign_groups, connectionless_backends, diff_map, render,
};
use sluice_fuzz::ClusterInput;
use sluice_plan::{Plan, Protocol};

fn apply<K: Ord + Clone, V: Clone>(
    map: &BTreeMap<K, V>,
    diff: &sluice_dp_ebpf::state::MapDiff<K, V>,
) -> BTreeMap<K, V> {
    let mut out = map.clone();
    for k in &diff.delete {
        out.remove(k);
    }
    for (k, v) in &diff.upsert {
        out.insert(k.clone(), v.clone());
    }
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
    let (first, second, _) = sluice_fuzz::plan_both(&g);
    let empty = MapContent::default();
    let groups = assign_groups(&first, &Groups::default(), &empty);
    let content = render(&first, &groups);
    check_content(&first, &content);
    // Restart: ids come from the maps only.
    let reread = assign_groups(&first, &Groups::default(), &content);
    assert_eq!(
        render(&first, &reread),
        content,
        "a restart rewrites nothing"
    );
    // Update: kept ids, and the diff is exact.
    let next_groups = assign_groups(&second, &groups, &content);
    for (name, id) in &next_groups.ids {
        if let Some(old) = groups.ids.get(name) {
            assert_eq!(old, id, "group {name:?} renumbered");
        }
    }
    let next = render(&second, &next_groups);
    check_content(&second, &next);
    assert_eq!(
        apply(&content.svc, &diff_map(&content.svc, &next.svc)),
        next.svc
    );
    assert_eq!(
        apply(&content.slot, &diff_map(&content.slot, &next.slot)),
        next.slot
    );
    assert_eq!(
        apply(&content.maglev, &diff_map(&content.maglev, &next.maglev)),
        next.maglev
    );
    let _ = sluice_dp_ebpf::state::removed_backends(&content, &next);
});
