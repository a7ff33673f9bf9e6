//! Rules of every served Ingress merged into hosts, in conflict order, with ingress-nginx's
//! precedence: one server per host, the first Ingress naming a host gives its default
//! location, the same path (and path type) defined twice goes to the older Ingress, and a host
//! where any Ingress uses `use-regex` or `rewrite-target` has all its paths matched as
//! case-insensitive regexes in ingress-nginx's location order.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{HTTPIngressPath, Ingress};
use sluice_model::ObjectKey;
use sluice_plan::{
    BackendPlan, Canary, CookieAffinity, HostMatch, HostPlan, PathKind, PathRule, RouteAction,
    RouteOptions, RoutePlan,
};

use crate::annotations::{CanarySpec, Parsed};
use crate::backends::Resolver;
use crate::tls::TlsHosts;
use crate::{Warnings, name};

/// Largest compiled size of one path regex (bad input must not cost the node its memory).
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Default)]
pub(crate) struct HostsBuilder {
    hosts: BTreeMap<HostMatch, HostEntry>,
    /// The catch-all for hosts no rule names: (from a rules-less Ingress, action).
    catch_all: Option<(bool, RouteAction)>,
}

struct HostEntry {
    /// In conflict order.
    rules: Vec<Candidate>,
    /// From the first Ingress naming the host.
    default: RouteAction,
    /// (path type as written, path) → index of the rule that took it.
    taken: BTreeMap<(String, String), usize>,
}

struct Candidate {
    kind: PathKind,
    path: String,
    action: RouteAction,
    ingress: ObjectKey,
    /// The Ingress asks for regex matching of this path (`use-regex` / `rewrite-target`).
    wants_regex: bool,
}

impl HostsBuilder {
    pub(crate) fn add_ingress(
        &mut self,
        key: &ObjectKey,
        ingress: &Ingress,
        parsed: &Parsed,
        tls: &TlsHosts,
        backends: &mut Resolver<'_>,
        warnings: &mut Warnings,
    ) {
        let Some(spec) = ingress.spec.as_ref() else {
            warnings.ingress(key, "has no spec");
            return;
        };
        let default_backend = spec
            .default_backend
            .as_ref()
            .and_then(|b| backends.backend(key, b, warnings));
        let rules = spec.rules.as_deref().unwrap_or_default();
        if default_backend.is_some() {
            let action = default_action(key, default_backend.clone(), parsed, &HostMatch::Any, tls);
            self.offer_catch_all(key, rules.is_empty(), action, warnings);
        }
        for rule in rules {
            let Some(host) = host_match(rule.host.as_deref()) else {
                let host = rule.host.as_deref().unwrap_or("");
                warnings.ingress(
                    key,
                    format!("host {host:?} is not a valid host or *. wildcard; rule skipped"),
                );
                continue;
            };
            let entry = self.hosts.entry(host.clone()).or_insert_with(|| HostEntry {
                rules: Vec::new(),
                default: default_action(key, default_backend.clone(), parsed, &host, tls),
                taken: BTreeMap::new(),
            });
            for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let candidate = candidate(key, path, parsed, &host, tls, backends, warnings);
                if let Some(candidate) = candidate {
                    entry.add(&host, candidate, path.path_type.as_str(), warnings);
                }
            }
        }
    }

    /// A rules-less Ingress's `defaultBackend` catches every host no rule names; without one,
    /// the oldest Ingress with rules and a `defaultBackend` does (as ingress-nginx's catch-all
    /// server also takes those). Among equals the oldest wins.
    fn offer_catch_all(
        &mut self,
        key: &ObjectKey,
        rules_less: bool,
        offer: RouteAction,
        warnings: &mut Warnings,
    ) {
        match &self.catch_all {
            Some((true, winner)) if rules_less => {
                let message = format!(
                    "defaultBackend is not used for hosts no rule names: Ingress {} (older) already provides it",
                    winner.ingress
                );
                warnings.ingress(key, message);
            }
            Some((existing_rules_less, _)) if *existing_rules_less || !rules_less => {}
            _ => self.catch_all = Some((rules_less, offer)),
        }
    }

    /// Merges a `canary: "true"` Ingress: each of its paths becomes the alternative backend of
    /// the route with the same host, path and path type (ingress-nginx's rule); its
    /// `defaultBackend` that of the catch-all. Anything without such a route is warned about.
    pub(crate) fn add_canary(
        &mut self,
        key: &ObjectKey,
        ingress: &Ingress,
        spec: &CanarySpec,
        backends: &mut Resolver<'_>,
        warnings: &mut Warnings,
    ) {
        let Some(ingress_spec) = ingress.spec.as_ref() else {
            warnings.ingress(key, "has no spec");
            return;
        };
        if let Some(b) = &ingress_spec.default_backend {
            let backend = backends.backend(key, b, warnings);
            match (backend, self.catch_all.as_mut()) {
                (Some(backend), Some((_, action))) => attach(action, key, backend, spec, warnings),
                (Some(_), None) => warnings.ingress(key, "canary defaultBackend has no primary default backend to share traffic with; ignored"),
                (None, _) => {}
            }
        }
        for rule in ingress_spec.rules.iter().flatten() {
            let host = host_match(rule.host.as_deref());
            for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let written = path.path.as_deref().unwrap_or("/");
                let value = match path.path_type.as_str() {
                    "Prefix" if written != "/" => written.trim_end_matches('/'),
                    _ => written,
                };
                let slot = (path.path_type.clone(), value.to_owned());
                let primary = host
                    .as_ref()
                    .and_then(|h| self.hosts.get_mut(h))
                    .and_then(|entry| entry.taken.get(&slot).map(|&i| &mut entry.rules[i]));
                let Some(primary) = primary else {
                    let host = rule.host.as_deref().unwrap_or("");
                    let message = format!(
                        "canary path {written:?} on host {host:?} matches no route of a non-canary Ingress (same host, path and path type); ignored"
                    );
                    warnings.ingress(key, message);
                    continue;
                };
                if let Some(backend) = backends.backend(key, &path.backend, warnings) {
                    attach(&mut primary.action, key, backend, spec, warnings);
                }
            }
        }
    }

    /// The hosts in plan order (exact, wildcard, any) and the catch-all.
    pub(crate) fn finish(self, warnings: &mut Warnings) -> RoutePlan {
        let catch_all = self.catch_all.map(|(_, action)| action);
        let hosts = self
            .hosts
            .into_iter()
            .map(|(host, entry)| entry.finish(host, catch_all.as_ref(), warnings))
            .collect();
        RoutePlan {
            hosts,
            default_backend: catch_all,
            ..RoutePlan::default()
        }
    }
}

/// `None` for a malformed host (a `*` anywhere but as the whole first label).
fn host_match(host: Option<&str>) -> Option<HostMatch> {
    let host = host
        .unwrap_or("")
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Some(HostMatch::Any);
    }
    match host.strip_prefix("*.") {
        Some(parent) if !parent.is_empty() && !parent.contains('*') => {
            Some(HostMatch::Wildcard(parent.into()))
        }
        Some(_) => None,
        None if host.contains('*') => None,
        None => Some(HostMatch::Exact(host.into())),
    }
}

/// One path of an Ingress rule, checked; `None` (with a warning) when it cannot be routed.
fn candidate(
    key: &ObjectKey,
    path: &HTTPIngressPath,
    parsed: &Parsed,
    host: &HostMatch,
    tls: &TlsHosts,
    backends: &mut Resolver<'_>,
    warnings: &mut Warnings,
) -> Option<Candidate> {
    let kind = match path.path_type.as_str() {
        "Exact" => PathKind::Exact,
        "Prefix" => PathKind::Prefix,
        "ImplementationSpecific" => PathKind::StringPrefix,
        other => {
            let message = format!(
                "path type {other:?} is not Exact, Prefix or ImplementationSpecific; path skipped"
            );
            warnings.ingress(key, message);
            return None;
        }
    };
    let written = path.path.as_deref().unwrap_or("/");
    if !written.starts_with('/') {
        warnings.ingress(
            key,
            format!("path {written:?} does not start with '/'; path skipped"),
        );
        return None;
    }
    let value = match kind {
        PathKind::Prefix if written != "/" => written.trim_end_matches('/'),
        _ => written,
    };
    let backend = backends.backend(key, &path.backend, warnings)?;
    Some(Candidate {
        kind,
        path: value.to_owned(),
        action: action(key, Some(backend), parsed, host, written, tls),
        ingress: key.clone(),
        wants_regex: parsed.wants_regex(written),
    })
}

/// The options of one route of an Ingress on `host` at `path`.
fn action(
    key: &ObjectKey,
    backend: Option<Arc<BackendPlan>>,
    parsed: &Parsed,
    host: &HostMatch,
    path: &str,
    tls: &TlsHosts,
) -> RouteAction {
    let mut options: RouteOptions = parsed.options.clone();
    // A target equal to the path rewrites nothing (ingress-nginx adds no rewrite then).
    if options.rewrite_target.as_deref() == Some(path) {
        options.rewrite_target = None;
    }
    options.https_redirect = parsed.force_ssl_redirect || (parsed.ssl_redirect && tls.covers(host));
    options.affinity = parsed.affinity.as_ref().map(|a| CookieAffinity {
        name: a.name.clone(),
        max_age: a.max_age,
        path: a.path.clone().unwrap_or_else(|| path.to_owned()),
    });
    if let (Some(tls), Some(b)) = (options.upstream_tls.as_mut(), &backend)
        && tls.name.is_empty()
    {
        tls.name = format!("{}.{}.svc", b.service.name, b.service.namespace);
    }
    RouteAction {
        ingress: name(key),
        backend,
        options: Arc::new(options),
    }
}

/// A default route (`defaultBackend` or the built-in 404) with the Ingress's options, less
/// `rewrite-target`, which only applies to the paths it was written for. The built-in 404
/// keeps only what acts before any backend (redirects, allow list, auth, limits, CORS).
fn default_action(
    key: &ObjectKey,
    backend: Option<Arc<BackendPlan>>,
    parsed: &Parsed,
    host: &HostMatch,
    tls: &TlsHosts,
) -> RouteAction {
    let mut action = action(key, backend, parsed, host, "/", tls);
    let o = Arc::make_mut(&mut action.options);
    o.rewrite_target = None;
    if action.backend.is_none() {
        *o = RouteOptions {
            https_redirect: o.https_redirect,
            redirect: o.redirect.take(),
            app_root: o.app_root.take(),
            allow_sources: o.allow_sources.take(),
            cors: o.cors.take(),
            rate_limit: o.rate_limit.take(),
            connection_limit: o.connection_limit.take(),
            basic_auth: o.basic_auth.take(),
            ..RouteOptions::default()
        };
    }
    action
}

impl HostEntry {
    /// Adds a path unless the same path and type is taken by an earlier Ingress (or rule).
    fn add(&mut self, host: &HostMatch, c: Candidate, path_type: &str, warnings: &mut Warnings) {
        let slot = (path_type.to_owned(), c.path.clone());
        if let Some(&index) = self.taken.get(&slot) {
            let winner = &self.rules[index].ingress;
            let by = if *winner == c.ingress {
                "an earlier rule of the same Ingress".to_owned()
            } else {
                format!("Ingress {winner} (older)")
            };
            let message = format!(
                "{path_type} path {:?} on host {:?} is already routed by {by}; ignored",
                c.path,
                host.to_string()
            );
            warnings.ingress(&c.ingress, message);
            return;
        }
        self.taken.insert(slot, self.rules.len());
        self.rules.push(c);
    }

    fn finish(
        self,
        host: HostMatch,
        catch_all: Option<&RouteAction>,
        warnings: &mut Warnings,
    ) -> HostPlan {
        let paths = if self.rules.iter().any(|c| c.wants_regex) {
            regex_paths(&host, self.rules, warnings)
        } else {
            plain_paths(&host, self.rules, warnings)
        };
        // Rules without host live in the catch-all server: its default is the catch-all's.
        let default = match (&host, catch_all) {
            (HostMatch::Any, Some(action)) => action.clone(),
            _ => self.default,
        };
        HostPlan {
            host,
            paths,
            default,
        }
    }
}

/// Exact paths (sorted), then prefixes longest first. Two rules that would need the same
/// prefix string (`Prefix /a` and `ImplementationSpecific /a/`) conflict: the older wins.
fn plain_paths(host: &HostMatch, rules: Vec<Candidate>, warnings: &mut Warnings) -> Vec<PathRule> {
    let mut exact = Vec::new();
    let mut prefixes: Vec<(String, PathRule)> = Vec::new();
    for c in rules {
        let rule = PathRule {
            kind: c.kind,
            path: c.path.as_str().into(),
            action: c.action,
        };
        let Some(prefix) = rule.prefix() else {
            exact.push(rule);
            continue;
        };
        if let Some((_, winner)) = prefixes.iter().find(|(p, _)| *p == prefix) {
            let message = format!(
                "{} path {:?} on host {:?} overlaps {} path {:?} of Ingress {} (older); ignored",
                c.kind.as_str(),
                c.path,
                host.to_string(),
                winner.kind.as_str(),
                winner.path,
                winner.action.ingress
            );
            warnings.ingress(&c.ingress, message);
            continue;
        }
        prefixes.push((prefix, rule));
    }
    exact.sort_by(|a, b| a.path.cmp(&b.path));
    prefixes.sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    exact
        .into_iter()
        .chain(prefixes.into_iter().map(|(_, r)| r))
        .collect()
}

/// ingress-nginx on a regex host: every location becomes `~* "^path"`; a `Prefix` path of an
/// Ingress without regex annotations keeps its two locations (`path/` and `path`, the second
/// unless an `Exact` path takes it); locations are ordered longest first (ties: reverse
/// lexical), and nginx takes the first regex that matches.
fn regex_paths(host: &HostMatch, rules: Vec<Candidate>, warnings: &mut Warnings) -> Vec<PathRule> {
    let explicit_exact: HashSet<String> = rules
        .iter()
        .filter(|c| c.kind == PathKind::Exact)
        .map(|c| c.path.clone())
        .collect();
    let mut patterns: Vec<(String, &Candidate)> = Vec::new();
    for c in &rules {
        if c.kind == PathKind::Prefix && !c.wants_regex && c.path != "/" {
            patterns.push((format!("{}/", c.path), c));
            if !explicit_exact.contains(&c.path) {
                patterns.push((c.path.clone(), c));
            }
        } else {
            patterns.push((c.path.clone(), c));
        }
    }
    patterns.sort_by(|(a, _), (b, _)| b.cmp(a));
    patterns.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (pattern, c) in patterns {
        if !seen.insert(pattern.clone()) {
            continue;
        }
        let regex = format!("(?i)^{pattern}");
        if let Err(e) = regex::RegexBuilder::new(&regex)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
        {
            let message = format!(
                "path {:?} on host {:?} is not a valid regular expression: {e}; path skipped",
                c.path,
                host.to_string()
            );
            warnings.ingress(&c.ingress, message.replace('\n', " "));
            continue;
        }
        out.push(PathRule {
            kind: PathKind::Regex,
            path: regex.into(),
            action: c.action.clone(),
        });
    }
    out
}

/// Makes `backend` the canary of the route (one canary per route, as ingress-nginx supports:
/// the oldest canary Ingress wins).
fn attach(
    action: &mut RouteAction,
    key: &ObjectKey,
    backend: Arc<BackendPlan>,
    spec: &CanarySpec,
    warnings: &mut Warnings,
) {
    let options = Arc::make_mut(&mut action.options);
    if let Some(existing) = &options.canary {
        let message = format!(
            "the route of Ingress {} already has canary Ingress {} (older); ignored",
            action.ingress, existing.ingress
        );
        warnings.ingress(key, message);
        return;
    }
    options.canary = Some(Canary {
        ingress: name(key),
        backend,
        header: spec.header.clone(),
        header_value: spec.header_value.clone(),
        cookie: spec.cookie.clone(),
        weight: spec.weight,
        weight_total: spec.weight_total,
    });
}
