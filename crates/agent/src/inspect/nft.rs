//! Reads the nftables dataplane's tables (`nft -j list table ip|ip6 sluice`) back into a
//! [`KernelView`], following each frontend the way a packet does: the verdict maps
//! (`service-ips`, `service-nodeports`, `no-endpoint-*`, `firewall-ips`) → the route chain
//! (`svc-*`/`ext-*`: one rule per source class that differs, then everyone else) → the
//! shared pick chain (`pick-*`) and the frontend's endpoints in its slot map (`slots-*`), or
//! with session affinity the dispatch chain (`cl-*`/`lo-*`) → the endpoint chains (`ep-*`)
//! and their `dnat to`.
//! The layout is docs/nftables.md's; the JSON is parsed by hand because nft 1.0.6 prints
//! concatenated map keys the `nftables` crate refuses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use ipnet::IpNet;
use serde_json::Value;
use sluice_plan::{Family, FrontendAddr, FrontendKey, Protocol, SourceClass};

use super::InspectError;
use super::kernel::{KernelFrontend, KernelRoute, KernelView};

/// The table both families use.
pub const TABLE: &str = "sluice";

/// Runs `nft -j list table FAMILY sluice`; `None` when the table does not exist.
pub fn list_table(family: Family) -> Result<Option<Value>, InspectError> {
    let family_word = family_keyword(family);
    let output = Command::new("nft")
        .args(["-j", "list", "table", family_word, TABLE])
        .output()
        .map_err(|source| InspectError::Run {
            command: "nft".into(),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(InspectError::Failed {
            command: format!("nft -j list table {family_word} {TABLE}"),
            stderr: stderr.trim().to_owned(),
        });
    }
    serde_json::from_slice(&output.stdout)
        .map(Some)
        .map_err(|source| InspectError::Parse {
            what: format!("nft -j list table {family_word} {TABLE}"),
            source,
        })
}

fn family_keyword(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// Both families' tables; `None` when neither exists.
pub fn read() -> Result<Option<KernelView>, InspectError> {
    let mut view = KernelView {
        dataplane: "nftables".into(),
        ..KernelView::default()
    };
    let mut found = false;
    for family in Family::ALL {
        if let Some(doc) = list_table(family)? {
            found = true;
            decode_into(&doc, family, &mut view);
        }
    }
    Ok(found.then_some(view))
}

/// The objects of one `nft -j` listing, by kind.
#[derive(Default)]
struct Objects<'a> {
    /// map name → (key, verdict) elements.
    maps: HashMap<&'a str, Vec<(&'a Value, &'a Value)>>,
    sets: HashMap<&'a str, Vec<&'a Value>>,
    /// chain name → rules (each an `expr` list).
    chains: HashMap<&'a str, Vec<&'a [Value]>>,
}

fn objects(doc: &Value) -> Objects<'_> {
    let mut out = Objects::default();
    for object in doc["nftables"].as_array().into_iter().flatten() {
        if let Some(map) = object.get("map") {
            let elems = map["elem"].as_array().into_iter().flatten();
            let pairs = elems.filter_map(|e| Some((e.get(0)?, e.get(1)?)));
            out.maps
                .insert(map["name"].as_str().unwrap_or(""), pairs.collect());
        } else if let Some(set) = object.get("set") {
            let elems = set["elem"].as_array().into_iter().flatten().collect();
            out.sets.insert(set["name"].as_str().unwrap_or(""), elems);
        } else if let Some(chain) = object.get("chain") {
            out.chains
                .entry(chain["name"].as_str().unwrap_or(""))
                .or_default();
        } else if let Some(rule) = object.get("rule") {
            let expr = rule["expr"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            out.chains
                .entry(rule["chain"].as_str().unwrap_or(""))
                .or_default()
                .push(expr);
        }
    }
    out
}

/// Adds one family's table to `view`.
pub fn decode_into(doc: &Value, family: Family, view: &mut KernelView) {
    let objects = objects(doc);
    let table = format!("{} {TABLE}", family_keyword(family));
    view.nodeport_addresses.extend(
        objects
            .sets
            .get("nodeport-ips")
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str()?.parse::<IpAddr>().ok()),
    );
    view.cluster_cidrs.extend(
        objects
            .sets
            .get("cluster-cidrs")
            .into_iter()
            .flatten()
            .filter_map(|elem| prefix(elem)),
    );
    let firewall: HashMap<FrontendKey, Vec<IpNet>> = objects
        .maps
        .get("firewall-ips")
        .into_iter()
        .flatten()
        .filter_map(|(key, verdict)| {
            let key = frontend_key(key, family)?;
            Some((key, allowed_sources(&objects, goto_target(verdict)?)))
        })
        .collect();
    for map in ["service-ips", "service-nodeports"] {
        for (key, verdict) in objects.maps.get(map).into_iter().flatten() {
            let (Some(key), Some(chain)) = (frontend_key(key, family), goto_target(verdict)) else {
                continue;
            };
            let [pods, node, outside] =
                SourceClass::ALL.map(|c| route_of(&objects, chain, &key, c));
            view.frontends.push(KernelFrontend {
                key,
                service: service_of_chain(chain),
                location: format!("{table} {map} -> {chain}"),
                pods,
                node,
                outside,
                allowed_sources: firewall.get(&key).cloned().unwrap_or_default(),
                flags: chain_flags(&objects, chain),
            });
        }
    }
    for map in ["no-endpoint-services", "no-endpoint-nodeports"] {
        for (key, verdict) in objects.maps.get(map).into_iter().flatten() {
            let Some(key) = frontend_key(key, family) else {
                continue;
            };
            let route = if goto_target(verdict) == Some("reject-chain") {
                KernelRoute::Reject
            } else {
                KernelRoute::Drop
            };
            view.frontends.push(KernelFrontend {
                key,
                service: None,
                location: format!("{table} {map}"),
                pods: route.clone(),
                node: route.clone(),
                outside: route,
                allowed_sources: firewall.get(&key).cloned().unwrap_or_default(),
                flags: Vec::new(),
            });
        }
    }
    view.frontends.sort_by_key(|fe| fe.key);
}

/// A map key (`addr . proto . port` or `proto . port`) as a frontend of `family`.
fn frontend_key(key: &Value, family: Family) -> Option<FrontendKey> {
    let parts = key.get("concat")?.as_array()?;
    let (addr, rest) = match parts.len() {
        3 => (
            FrontendAddr::Ip(parts[0].as_str()?.parse().ok()?),
            &parts[1..],
        ),
        2 => (FrontendAddr::NodePorts(family), &parts[..]),
        _ => return None,
    };
    let protocol = match rest[0].as_str()? {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => return None,
    };
    let port = u16::try_from(rest[1].as_u64()?).ok()?;
    Some(FrontendKey {
        addr,
        protocol,
        port,
    })
}

fn goto_target(verdict: &Value) -> Option<&str> {
    verdict
        .get("goto")
        .or_else(|| verdict.get("jump"))?
        .get("target")?
        .as_str()
}

/// `{"prefix": {"addr", "len"}}` or a plain address, as a network.
fn prefix(value: &Value) -> Option<IpNet> {
    if let Some(text) = value.as_str() {
        return text.parse::<IpAddr>().ok().map(IpNet::from);
    }
    let p = value.get("prefix")?;
    let addr: IpAddr = p["addr"].as_str()?.parse().ok()?;
    IpNet::new(addr, u8::try_from(p["len"].as_u64()?).ok()?).ok()
}

/// The ranges a `fw-*` chain returns for (`ip saddr RANGE return`); the rest is dropped.
fn allowed_sources(objects: &Objects<'_>, chain: &str) -> Vec<IpNet> {
    rules(objects, chain)
        .filter(|rule| rule.iter().any(|s| s.get("return").is_some()))
        .filter_map(|rule| rule.iter().find_map(|s| prefix(&s.get("match")?["right"])))
        .collect()
}

fn rules<'a>(objects: &'a Objects<'_>, chain: &str) -> impl Iterator<Item = &'a [Value]> {
    objects.chains.get(chain).into_iter().flatten().copied()
}

/// Which classes a route-chain rule's match selects: `ip saddr @cluster-cidrs` → pods,
/// `fib saddr type local` → node, no match → everyone.
fn rule_classes(rule: &[Value]) -> Option<SourceClass> {
    rule.iter().find_map(|statement| {
        let m = statement.get("match")?;
        if m["right"] == "@cluster-cidrs" {
            Some(SourceClass::Pods)
        } else if m["left"].get("fib").is_some() && m["right"] == "local" {
            Some(SourceClass::Node)
        } else {
            None
        }
    })
}

/// What the route chain of `key` does for `class`: the first rule selecting it (or everyone).
fn route_of(
    objects: &Objects<'_>,
    chain: &str,
    key: &FrontendKey,
    class: SourceClass,
) -> KernelRoute {
    let rule = rules(objects, chain).find(|rule| rule_classes(rule).is_none_or(|c| c == class));
    let Some(rule) = rule else {
        return KernelRoute::Drop;
    };
    if rule.iter().any(|s| s.get("drop").is_some()) {
        return KernelRoute::Drop;
    }
    let masquerade = rule.iter().any(|s| s.get("mangle").is_some());
    let target = rule.iter().find_map(goto_target);
    let backends = match target {
        Some(pick) if pick.starts_with("pick-") => pick_backends(objects, pick, key),
        Some(dispatch) => dispatch_backends(objects, dispatch),
        None => Vec::new(),
    };
    KernelRoute::Forward {
        backends,
        masquerade,
    }
}

/// The endpoints `key` may draw in the slot map of pick chain `pick` (`pick-X` reads
/// `slots-X`, keyed `address . port . slot` or `port . slot`).
fn pick_backends(objects: &Objects<'_>, pick: &str, key: &FrontendKey) -> Vec<SocketAddr> {
    let map = pick.replacen("pick-", "slots-", 1);
    let frontend = |parts: &[Value]| match (key.addr, parts) {
        (FrontendAddr::Ip(ip), [addr, port, _slot]) => {
            addr.as_str().and_then(|a| a.parse::<IpAddr>().ok()) == Some(ip)
                && port.as_u64() == Some(u64::from(key.port))
        }
        (FrontendAddr::NodePorts(_), [port, _slot]) => port.as_u64() == Some(u64::from(key.port)),
        _ => false,
    };
    let mut out: Vec<SocketAddr> = objects
        .maps
        .get(map.as_str())
        .into_iter()
        .flatten()
        .filter(|(k, _)| {
            k.get("concat")
                .and_then(Value::as_array)
                .is_some_and(|parts| frontend(parts))
        })
        .filter_map(|(_, v)| {
            let parts = v.get("concat")?.as_array()?;
            let ip: IpAddr = parts.first()?.as_str()?.parse().ok()?;
            let port = u16::try_from(parts.get(1)?.as_u64()?).ok()?;
            Some(SocketAddr::new(ip, port))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The DNAT targets of every `ep-*` chain a dispatch chain sends to.
fn dispatch_backends(objects: &Objects<'_>, chain: &str) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = rules(objects, chain)
        .flat_map(|rule| rule.iter().filter_map(goto_target))
        .filter(|target| target.starts_with("ep-"))
        .flat_map(|ep| rules(objects, ep))
        .filter_map(|rule| rule.iter().find_map(dnat_target))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn dnat_target(statement: &Value) -> Option<SocketAddr> {
    let dnat = statement.get("dnat")?;
    let ip: IpAddr = dnat["addr"].as_str()?.parse().ok()?;
    let port = u16::try_from(dnat["port"].as_u64()?).ok()?;
    Some(SocketAddr::new(ip, port))
}

/// `affinity` when a dispatch chain reached from `chain` consults an `aff-*` set.
fn chain_flags(objects: &Objects<'_>, chain: &str) -> Vec<String> {
    let dispatch: Vec<&str> = rules(objects, chain)
        .flat_map(|rule| rule.iter().filter_map(goto_target))
        .collect();
    let affinity = dispatch.iter().flat_map(|d| rules(objects, d)).any(|rule| {
        rule.iter().any(|s| {
            s.get("match")
                .is_some_and(|m| m["right"].as_str().is_some_and(|r| r.starts_with("@aff-")))
        })
    });
    if affinity {
        vec!["affinity".to_owned()]
    } else {
        Vec::new()
    }
}

/// The service port a chain belongs to, from its readable suffix
/// (`svc-HASH-namespace/name/proto[/port]` → `namespace/name[:port]/proto`).
fn service_of_chain(chain: &str) -> Option<String> {
    let mut parts = chain.splitn(3, '-');
    let (_, _, readable) = (parts.next()?, parts.next()?, parts.next()?);
    let fields: Vec<&str> = readable.split('/').collect();
    Some(match fields.as_slice() {
        [namespace, name, proto] => format!("{namespace}/{name}/{proto}"),
        [namespace, name, proto, port] => format!("{namespace}/{name}:{port}/{proto}"),
        _ => readable.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> KernelView {
        let mut view = KernelView::default();
        for (file, family) in [
            (include_str!("testdata/nft-ip.json"), Family::V4),
            (include_str!("testdata/nft-ip6.json"), Family::V6),
        ] {
            let doc: Value = serde_json::from_str(file).expect("fixture is JSON");
            decode_into(&doc, family, &mut view);
        }
        view
    }

    fn find<'a>(view: &'a KernelView, ip: &str, port: u16) -> &'a KernelFrontend {
        view.frontend(ip.parse().unwrap(), Protocol::Tcp, port)
            .unwrap_or_else(|| panic!("{ip}:{port} in the fixture"))
    }

    fn backends(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|b| b.parse().unwrap()).collect()
    }

    // The fixture is the nft script `sluice plan` renders for crates/compute's load-balancer,
    // cluster-ip and dual-stack golden objects, loaded into nft 1.0.6 and listed with -j.

    #[test]
    fn routes_per_source_class_follow_the_chains() {
        let view = fixture();
        // default/gateway:http LB IP, eTP=Local with source ranges: outside → local set,
        // node → dropped (its addresses are outside the ranges).
        let lb = find(&view, "198.51.100.10", 80);
        assert_eq!(lb.service.as_deref(), Some("default/gateway:http/tcp"));
        assert_eq!(
            lb.outside,
            KernelRoute::Forward {
                backends: backends(&["10.244.1.21:8080"]),
                masquerade: false
            }
        );
        assert_eq!(lb.node, KernelRoute::Drop);
        assert_eq!(
            lb.allowed_sources,
            vec!["203.0.113.0/24".parse::<IpNet>().unwrap()]
        );
        // NodePort of the same service: node-local clients short-circuit to the cluster set,
        // masqueraded; the NodePort addresses come from nodeport-ips.
        let np = find(&view, "192.168.0.10", 31080);
        assert_eq!(np.key.to_string(), "nodeports-v4:31080/tcp");
        assert_eq!(
            np.node,
            KernelRoute::Forward {
                backends: backends(&["10.244.1.21:8080", "10.244.2.21:8080"]),
                masquerade: true
            }
        );
        assert_eq!(np.outside.backends(), backends(&["10.244.1.21:8080"]));
        // Cluster IP with affinity: pods not masqueraded, the rest masqueraded.
        let web = find(&view, "10.96.0.20", 80);
        assert_eq!(web.flags, ["affinity"]);
        assert!(matches!(
            web.pods,
            KernelRoute::Forward {
                masquerade: false,
                ..
            }
        ));
        assert!(matches!(
            web.outside,
            KernelRoute::Forward {
                masquerade: true,
                ..
            }
        ));
    }

    #[test]
    fn refusals_and_both_families_are_read() {
        let view = fixture();
        let rejected = find(&view, "10.96.2.3", 80);
        assert_eq!(rejected.outside, KernelRoute::Reject);
        assert_eq!(rejected.location, "ip sluice no-endpoint-services");
        let v6 = find(&view, "fd00:96::7:2", 80);
        assert_eq!(v6.service.as_deref(), Some("default/v6-first/tcp"));
        assert_eq!(v6.pods.backends(), backends(&["[fd00:10:244:2::72]:8080"]));
        // The fixture's Node (from the load-balancer objects) has no IPv6 address, so the v6
        // NodePort is there but no address serves it.
        let v6_np = view
            .frontends
            .iter()
            .find(|fe| fe.key.to_string() == "nodeports-v6:30700/tcp")
            .expect("v6 NodePort");
        assert_eq!(v6_np.outside, KernelRoute::Reject);
        assert!(matches!(
            view.lookup("2001:db8::10".parse().unwrap(), Protocol::Tcp, 30700),
            crate::inspect::kernel::KernelLookup::NotNodePortAddress(_)
        ));
        assert!(
            view.cluster_cidrs
                .contains(&"fd00:10:244::/48".parse().unwrap())
        );
        assert!(
            view.nodeport_addresses
                .contains(&"192.168.0.10".parse().unwrap())
        );
    }

    #[test]
    fn chain_names_give_service_port_names() {
        assert_eq!(
            service_of_chain("svc-ABCDEFGH-default/web/tcp/http").as_deref(),
            Some("default/web:http/tcp")
        );
        assert_eq!(
            service_of_chain("ext-ABCDEFGH-kube-system/dns/udp").as_deref(),
            Some("kube-system/dns/udp")
        );
    }
}
