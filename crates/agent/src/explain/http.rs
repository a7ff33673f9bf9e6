//! HTTP walks: a request through the Ingress proxy's route table (inside the agent).

use serde::{Deserialize, Serialize};

use super::{Outcome, Step, Verdict, list, step, verdict};

/// One request's walk through the Ingress route table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpWalk {
    pub url: String,
    pub steps: Vec<Step>,
    pub verdict: Verdict,
}

/// `http[s]://HOST[:PORT]/PATH` → (https, host, path without query).
fn parse_url(url: &str) -> Result<(bool, String, String), String> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!("{url:?}: expected an http:// or https:// URL"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6).to_owned(),
        None => authority.split(':').next().unwrap_or(authority).to_owned(),
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let path = path.split(['?', '#']).next().unwrap_or("/").to_owned();
    Ok((https, host.to_ascii_lowercase(), path))
}

/// Walks a request through the proxy's current route table (inside the agent).
pub fn walk_http(
    table: &sluice_ingress::RouteTable,
    config: &sluice_ingress::IngressConfig,
    url: &str,
) -> Result<HttpWalk, String> {
    let (https, host, path) = parse_url(url)?;
    let mut walk = route_request(table, config, url, https, &host, &path);
    if https
        && walk.verdict.code != "no-certificate"
        && walk.verdict.code != "no-listener"
        && matches!(tls_for(table, &host), Tls::DefaultOnly)
    {
        default_certificate_verdict(&mut walk, &host);
    }
    Ok(walk)
}

fn route_request(
    table: &sluice_ingress::RouteTable,
    config: &sluice_ingress::IngressConfig,
    url: &str,
    https: bool,
    host: &str,
    path: &str,
) -> HttpWalk {
    let mut walk = HttpWalk {
        url: url.to_owned(),
        steps: Vec::new(),
        verdict: verdict(Outcome::NotHandled, "no-route", ""),
    };
    let listener = if https {
        config.https_bind
    } else {
        config.http_bind
    };
    let Some(listener) = listener else {
        walk.verdict = verdict(
            Outcome::Reject,
            "no-listener",
            format!(
                "the {} listener is disabled",
                if https { "HTTPS" } else { "HTTP" }
            ),
        );
        return walk;
    };
    walk.steps.push(step("listener", listener.to_string()));
    if https && !tls_step(&mut walk, table, host) {
        return walk;
    }
    walk.verdict = route_verdict(&mut walk.steps, table, host, path);
    walk
}

/// The route table's answer for `host` and `path`.
fn route_verdict(
    steps: &mut Vec<Step>,
    table: &sluice_ingress::RouteTable,
    host: &str,
    path: &str,
) -> Verdict {
    let normalized = match sluice_ingress::normalize_path(path) {
        Ok(p) => p.into_owned(),
        Err(err) => {
            let reason = format!("400: path {path:?}: {err:?}");
            return verdict(Outcome::Reject, "no-route", reason);
        }
    };
    steps.push(step("request", format!("host {host}, path {normalized}")));
    let Some(backend) = table.lookup(host, &normalized) else {
        return verdict(
            Outcome::Reject,
            "no-route",
            format!(
                "404: no Ingress rule matches host {host} and path {normalized}, and there is no \
                 default backend"
            ),
        );
    };
    let endpoints: Vec<String> = backend
        .endpoints()
        .iter()
        .map(ToString::to_string)
        .collect();
    steps.push(step(
        "route",
        format!(
            "backend {backend} (Service {}, port {})",
            backend.service(),
            backend.port()
        ),
    ));
    if endpoints.is_empty() {
        return verdict(
            Outcome::Reject,
            "no-endpoints",
            format!("503: {backend} has no ready endpoint"),
        );
    }
    steps.push(step("endpoints", list(&endpoints)));
    Verdict {
        outcome: Outcome::Forward,
        code: "routed".into(),
        reason: format!(
            "proxied to one of {} endpoint(s) (least outstanding requests)",
            endpoints.len()
        ),
        backends: endpoints,
    }
}

/// How the TLS handshake for `host` goes.
enum Tls {
    /// A certificate naming the host.
    Own,
    /// Only the default certificate (the first one configured), which does not name it.
    DefaultOnly,
    /// No certificate at all: the handshake fails.
    None(Vec<String>),
}

fn tls_for(table: &sluice_ingress::RouteTable, host: &str) -> Tls {
    let names = crate::inspect::rows::route_rows(&table.describe()).tls;
    let own = names.iter().any(|name| {
        name == host
            || name
                .strip_prefix("*.")
                .is_some_and(|parent| host.split_once('.').is_some_and(|(_, p)| p == parent))
    });
    if own {
        Tls::Own
    } else if table.has_certificate_for(None) {
        Tls::DefaultOnly
    } else {
        Tls::None(names)
    }
}

/// The certificate step; false (and the verdict) when the handshake fails.
fn tls_step(walk: &mut HttpWalk, table: &sluice_ingress::RouteTable, host: &str) -> bool {
    match tls_for(table, host) {
        Tls::Own => walk
            .steps
            .push(step("tls", format!("certificate for SNI {host}"))),
        Tls::DefaultOnly => walk.steps.push(step(
            "tls",
            format!("no certificate for SNI {host}: the default certificate is presented"),
        )),
        Tls::None(names) => {
            walk.verdict = verdict(
                Outcome::Reject,
                "no-certificate",
                format!(
                    "no certificate for SNI {host} (certificates: {}) and no default \
                     certificate: the TLS handshake fails",
                    list(&names)
                ),
            );
            return false;
        }
    }
    true
}

/// A request over TLS for a host without its own certificate is refused by every client that
/// verifies names, whatever the route: that is the verdict (the route is still shown).
fn default_certificate_verdict(walk: &mut HttpWalk, host: &str) {
    let route = format!("{}: {}", walk.verdict.code, walk.verdict.reason);
    walk.verdict = verdict(
        Outcome::Reject,
        "no-certificate",
        format!(
            "no certificate names {host}: the default certificate is presented, which does not \
             name {host}, so clients that verify it refuse the connection (without \
             verification: {route})"
        ),
    );
}
