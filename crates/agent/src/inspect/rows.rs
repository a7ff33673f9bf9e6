//! The running agent's decided state as rows (what the admin endpoint sends): service ports
//! from the plan, and the Ingress route table.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sluice_plan::{
    FrontendAddr, Plan, Route, RouteAction, RouteOptions, RoutePlan, SetName, SourceClass,
};

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
/// match type, path, backend (`404`: the built-in one) and its ready endpoints, the Ingress
/// it comes from and its options (`https-redirect 308`, `canary ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    pub host: String,
    #[serde(rename = "match")]
    pub match_type: String,
    pub path: String,
    pub backend: String,
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub ingress: String,
    #[serde(default)]
    pub options: Vec<String>,
}

/// Rows from the route plan the proxy executes.
pub fn route_rows(plan: &RoutePlan) -> RouteTableRows {
    let mut rows = RouteTableRows::default();
    for host in &plan.hosts {
        let name = host.host.to_string();
        for rule in &host.paths {
            rows.routes.push(route_row(
                &name,
                rule.kind.as_str(),
                &rule.path,
                &rule.action,
            ));
        }
        let default = &host.default;
        if default.backend.is_some() || *default.options != RouteOptions::default() {
            rows.routes.push(route_row(&name, "default", "", default));
        }
    }
    if let Some(action) = &plan.default_backend {
        rows.routes.push(route_row("-", "default", "", action));
    }
    rows.tls = plan.tls.hosts.iter().map(|h| h.name.to_string()).collect();
    if !plan.tls.default.is_empty() {
        rows.tls.push("default".to_owned());
    }
    rows
}

fn route_row(host: &str, match_type: &str, path: &str, action: &RouteAction) -> RouteRow {
    let backend = action.backend.as_ref();
    RouteRow {
        host: host.to_owned(),
        match_type: match_type.to_owned(),
        path: path.to_owned(),
        backend: backend.map_or_else(|| "404".to_owned(), ToString::to_string),
        endpoints: backend
            .iter()
            .flat_map(|b| b.endpoints.iter().map(ToString::to_string))
            .collect(),
        ingress: action.ingress.to_string(),
        options: action.options.lines(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
