//! The running agent's decided state as rows (what the admin endpoint sends): service ports
//! from the plan, and the Ingress route table.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sluice_plan::{FrontendAddr, Plan, Route, SetName, SourceClass};

/// One service port of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRow {
    /// `namespace/name[:port]/protocol`.
    pub service: String,
    pub frontends: Vec<FrontendRow>,
    /// Backends of the `cluster` and `local` sets (`ip:port`).
    pub cluster: Vec<String>,
    pub local: Vec<String>,
    pub affinity_timeout: Option<u32>,
}

/// One frontend of a service port and its route per source class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendRow {
    /// `10.96.0.10:80/tcp`, `nodeports-v4:30080/tcp`.
    pub frontend: String,
    /// The address (`None`: every NodePort address of `family`).
    pub ip: Option<IpAddr>,
    pub family: String,
    pub protocol: String,
    pub port: u16,
    pub kind: String,
    pub pods: String,
    pub node: String,
    pub outside: String,
    pub allowed_sources: Vec<String>,
    pub selection: String,
}

impl FrontendRow {
    pub fn route(&self, class: SourceClass) -> &str {
        match class {
            SourceClass::Pods => &self.pods,
            SourceClass::Node => &self.node,
            SourceClass::Outside => &self.outside,
        }
    }
}

impl ServiceRow {
    /// The backends a route text (`forward local masquerade`) sends to, of `family`.
    pub fn backends_of(&self, route: &str, family: &str) -> Vec<String> {
        let set = match route.split(' ').nth(1) {
            Some("cluster") => &self.cluster,
            Some("local") => &self.local,
            _ => return Vec::new(),
        };
        set.iter()
            .filter(|b| (family == "v6") == b.starts_with('['))
            .cloned()
            .collect()
    }
}

pub fn service_rows(plan: &Plan) -> Vec<ServiceRow> {
    plan.services
        .values()
        .map(|svc| ServiceRow {
            service: svc.name.to_string(),
            frontends: svc
                .frontends
                .iter()
                .map(|fe| FrontendRow {
                    frontend: fe.key.to_string(),
                    ip: match fe.key.addr {
                        FrontendAddr::Ip(ip) => Some(ip),
                        FrontendAddr::NodePorts(_) => None,
                    },
                    family: fe.key.family().to_string(),
                    protocol: fe.key.protocol.to_string(),
                    port: fe.key.port,
                    kind: fe.kind.as_str().to_owned(),
                    pods: route_text(fe.pods),
                    node: route_text(fe.node),
                    outside: route_text(fe.outside),
                    allowed_sources: fe.allowed_sources.iter().map(ToString::to_string).collect(),
                    selection: match fe.selection {
                        sluice_plan::Selection::Random => "random".into(),
                        sluice_plan::Selection::ConsistentHash => "consistent-hash".into(),
                    },
                })
                .collect(),
            cluster: svc
                .set(SetName::Cluster)
                .iter()
                .map(ToString::to_string)
                .collect(),
            local: svc
                .set(SetName::Local)
                .iter()
                .map(ToString::to_string)
                .collect(),
            affinity_timeout: svc.affinity_timeout,
        })
        .collect()
}

fn route_text(route: Route) -> String {
    route.to_string()
}

/// The Ingress route table as rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTableRows {
    pub routes: Vec<RouteRow>,
    /// Host names with a certificate (`*.parent` for wildcards), and `default`.
    pub tls: Vec<String>,
}

/// One route: host (`*` for rules without a host, `-` for the cluster-wide default backend),
/// match type, path, backend and its ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    pub host: String,
    #[serde(rename = "match")]
    pub match_type: String,
    pub path: String,
    pub backend: String,
    pub endpoints: Vec<String>,
}

/// Rows from `RouteTable::describe()` (its documented text form: `host H`, then indented
/// `exact|prefix PATH -> BACKEND [EPS]` and `default -> ...`; `default-backend -> ...`;
/// `tls NAMES`).
pub fn route_rows(described: &str) -> RouteTableRows {
    let mut rows = RouteTableRows::default();
    let mut host = String::new();
    for line in described.lines() {
        if let Some(name) = line.strip_prefix("host ") {
            host = name.to_owned();
        } else if let Some(names) = line.strip_prefix("tls ") {
            rows.tls = names.split(", ").map(str::to_owned).collect();
        } else if let Some(target) = line.strip_prefix("default-backend -> ") {
            rows.routes.push(route_row("-", "default", "", target));
        } else if let Some(rule) = line.strip_prefix("  ") {
            let Some((head, target)) = rule.split_once(" -> ") else {
                continue;
            };
            let (match_type, path) = head.split_once(' ').unwrap_or((head, ""));
            rows.routes.push(route_row(&host, match_type, path, target));
        }
    }
    rows
}

fn route_row(host: &str, match_type: &str, path: &str, target: &str) -> RouteRow {
    let (backend, endpoints) = target.split_once(" [").unwrap_or((target, "]"));
    RouteRow {
        host: host.to_owned(),
        match_type: match_type.to_owned(),
        path: path.to_owned(),
        backend: backend.to_owned(),
        endpoints: endpoints
            .trim_end_matches(']')
            .split(' ')
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_rows_read_the_described_table() {
        let text = "host cafe.example.com\n  exact /tea -> default/tea-svc:80 [10.244.1.2:8080]\n  \
                    prefix /coffee -> default/coffee-svc:http [10.244.2.3:8080 10.244.2.4:8080]\n  \
                    default -> default/fallback:80 []\nhost *\n  prefix / -> default/web:80 []\n\
                    default-backend -> default/fallback:80 []\ntls cafe.example.com, *.example.com, default\n";
        let rows = route_rows(text);
        assert_eq!(rows.tls, ["cafe.example.com", "*.example.com", "default"]);
        assert_eq!(rows.routes.len(), 5);
        assert_eq!(
            rows.routes[1],
            RouteRow {
                host: "cafe.example.com".into(),
                match_type: "prefix".into(),
                path: "/coffee".into(),
                backend: "default/coffee-svc:http".into(),
                endpoints: vec!["10.244.2.3:8080".into(), "10.244.2.4:8080".into()],
            }
        );
        assert_eq!(rows.routes[2].match_type, "default");
        assert!(rows.routes[2].endpoints.is_empty());
        assert_eq!(
            (rows.routes[3].host.as_str(), rows.routes[3].path.as_str()),
            ("*", "/")
        );
        assert_eq!(rows.routes[4].host, "-");
    }

    #[test]
    fn service_rows_select_backends_of_a_route_by_family() {
        let row = ServiceRow {
            service: "default/web/tcp".into(),
            frontends: Vec::new(),
            cluster: vec!["10.244.1.2:80".into(), "[fd00::2]:80".into()],
            local: vec![],
            affinity_timeout: None,
        };
        assert_eq!(
            row.backends_of("forward cluster masquerade", "v4"),
            ["10.244.1.2:80"]
        );
        assert_eq!(row.backends_of("forward cluster", "v6"), ["[fd00::2]:80"]);
        assert!(row.backends_of("forward local", "v4").is_empty());
        assert!(row.backends_of("reject", "v4").is_empty());
    }
}
