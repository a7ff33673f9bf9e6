//! HTTP walks: a request through the Ingress route plan, as the proxy executes it (inside the
//! agent): the listener, the certificate, the rule that matches and the plan's decision for it.

use serde::{Deserialize, Serialize};

use sluice_ingress::CertificateChoice;

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
        && matches!(tls_for(table, &host), Tls::DefaultOnly(_))
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
    walk.verdict = route_verdict(&mut walk.steps, table, https, host, path);
    walk
}

/// The route table's answer for `host` and `path`: the plan's decision for the route that
/// matches, as the proxy executes it.
fn route_verdict(
    steps: &mut Vec<Step>,
    table: &sluice_ingress::RouteTable,
    https: bool,
    host: &str,
    path: &str,
) -> Verdict {
    let normalized = match sluice_ingress::normalize_path(path) {
        Ok(p) => p.into_owned(),
        Err(err) => {
            let reason = format!("400: path {path:?}: {err}");
            return verdict(Outcome::Reject, "no-route", reason);
        }
    };
    steps.push(step("request", format!("host {host}, path {normalized}")));
    let Some(route) = table.lookup(host, &normalized) else {
        return verdict(
            Outcome::Reject,
            "no-route",
            format!(
                "404: no Ingress rule matches host {host} and path {normalized}, and there is no \
                 default backend"
            ),
        );
    };
    let action = route.action();
    steps.push(step(
        "route",
        format!("{} (Ingress {})", route.rule(), action.ingress),
    ));
    for line in action.options.lines() {
        steps.push(step("option", line));
    }
    if let Some(redirect) = redirect_verdict(&action.options, https, host, &normalized) {
        return redirect;
    }
    let Some(backend) = &action.backend else {
        return verdict(
            Outcome::Reject,
            "no-route",
            format!(
                "404: {} has no backend for path {normalized} (the Ingress names no \
                 defaultBackend)",
                route.rule()
            ),
        );
    };
    steps.push(step(
        "backend",
        format!("Service {}, port {}", backend.service, backend.port),
    ));
    let endpoints: Vec<String> = backend.endpoints.iter().map(ToString::to_string).collect();
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

/// Answers the proxy gives itself, before any backend: redirects.
fn redirect_verdict(
    options: &sluice_plan::RouteOptions,
    https: bool,
    host: &str,
    path: &str,
) -> Option<Verdict> {
    let (code, location) = if let Some(r) = &options.redirect {
        (r.code, r.location.clone())
    } else if options.https_redirect && !https {
        (308, format!("https://{host}{path}"))
    } else if let Some(root) = options.app_root.as_ref().filter(|_| path == "/") {
        (302, root.clone())
    } else {
        return None;
    };
    Some(verdict(
        Outcome::Reject,
        "redirect",
        format!("{code} to {location}"),
    ))
}

/// How the TLS handshake for `host` goes.
enum Tls {
    /// A certificate naming the host.
    Own(sluice_plan::ObjectName),
    /// Only the default certificate, which does not name it (`None`: the generated one).
    DefaultOnly(Option<sluice_plan::ObjectName>),
    /// No certificate at all: the handshake fails.
    None,
}

fn tls_for(table: &sluice_ingress::RouteTable, host: &str) -> Tls {
    match table.certificate_for(Some(host)) {
        Some(CertificateChoice::Host { secret }) => Tls::Own(secret),
        Some(CertificateChoice::Default { secret }) => Tls::DefaultOnly(secret),
        None => Tls::None,
    }
}

/// The certificate step; false (and the verdict) when the handshake fails.
fn tls_step(walk: &mut HttpWalk, table: &sluice_ingress::RouteTable, host: &str) -> bool {
    match tls_for(table, host) {
        Tls::Own(secret) => walk.steps.push(step(
            "tls",
            format!("certificate for SNI {host} (Secret {secret})"),
        )),
        Tls::DefaultOnly(secret) => walk.steps.push(step(
            "tls",
            format!(
                "no certificate for SNI {host}: the default certificate is presented ({})",
                secret.map_or_else(
                    || "generated, self-signed".to_owned(),
                    |s| format!("Secret {s}")
                )
            ),
        )),
        Tls::None => {
            let names: Vec<String> = table
                .plan()
                .tls
                .hosts
                .iter()
                .map(|h| h.name.to_string())
                .collect();
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
