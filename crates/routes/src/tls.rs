//! TLS: which hosts have TLS (for `ssl-redirect`), and the certificates that may answer each
//! SNI name, best first.
//!
//! Candidates for a name: the Secrets of `tls` entries listing it, then (for an exact name)
//! those listing a wildcard that covers it, each group in conflict order; then currently valid
//! certificates move before expired or not yet valid ones. So an expired certificate is served
//! only when nothing valid covers the name (it still beats the default certificate, which
//! would not match the name either); the proxy serves the first candidate whose key loads
//! and reports the others. A `tls` entry without `hosts` covers the rule hosts of its Ingress.
//!
//! The default certificate (handshakes without SNI or for a name no `tls` entry lists) is only
//! `--default-ssl-certificate`'s Secret, as in ingress-nginx: another Ingress's certificate is
//! never shown for a name it was not given for. Without the flag (or when its Secret is
//! unusable) the proxy presents a generated self-signed certificate.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use sluice_model::{ObjectKey, Snapshot};
use sluice_plan::{CertificatePlan, HostMatch, TlsHost, TlsPlan, Validity};

use crate::annotations::Parsed;
use crate::{RouteConfig, Served, Warnings, name};

/// Hosts some served (non-canary) Ingress lists in `tls`.
#[derive(Debug, Default)]
pub(crate) struct TlsHosts {
    exact: HashSet<String>,
    /// Parents of `*.parent` entries.
    wildcard: HashSet<String>,
}

impl TlsHosts {
    pub(crate) fn collect(ingresses: &[Served<'_>], parsed: &[Parsed]) -> Self {
        let mut hosts = Self::default();
        for ((_, ingress), parsed) in ingresses.iter().zip(parsed) {
            if parsed.canary.is_some() {
                continue;
            }
            for host in tls_names(ingress).into_iter().flat_map(|(names, _)| names) {
                match host.strip_prefix("*.") {
                    Some(parent) => hosts.wildcard.insert(parent.to_owned()),
                    None => hosts.exact.insert(host),
                };
            }
        }
        hosts
    }

    /// Whether requests for `host` have a certificate of their own (so `ssl-redirect`
    /// applies).
    pub(crate) fn covers(&self, host: &HostMatch) -> bool {
        match host {
            HostMatch::Exact(h) => {
                self.exact.contains(&**h)
                    || h.split_once('.')
                        .is_some_and(|(_, parent)| self.wildcard.contains(parent))
            }
            HostMatch::Wildcard(parent) => self.wildcard.contains(&**parent),
            HostMatch::Any => false,
        }
    }
}

/// Each `tls` entry of an Ingress: (host names, lower case, `*.` kept; the Secret name).
/// An entry without hosts covers the Ingress's own rule hosts.
fn tls_names(ingress: &Ingress) -> Vec<(Vec<String>, Option<&str>)> {
    let Some(spec) = ingress.spec.as_ref() else {
        return Vec::new();
    };
    let rule_hosts = || -> Vec<String> {
        let hosts = spec
            .rules
            .iter()
            .flatten()
            .filter_map(|r| r.host.as_deref());
        hosts.map(str::to_ascii_lowercase).collect()
    };
    spec.tls
        .iter()
        .flatten()
        .map(|t| {
            let names: Vec<String> = match t.hosts.as_deref() {
                Some(h) if !h.is_empty() => h
                    .iter()
                    .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                    .collect(),
                _ => rule_hosts(),
            };
            (names, t.secret_name.as_deref())
        })
        .collect()
}

/// Collects candidates while walking the Ingresses in conflict order.
struct Collector<'a> {
    snapshot: &'a Snapshot,
    now: i64,
    /// One plan per Secret (the first Ingress naming it is the one named in errors).
    loaded: BTreeMap<ObjectKey, Option<Arc<CertificatePlan>>>,
    by_name: BTreeMap<String, Vec<Arc<CertificatePlan>>>,
}

pub(crate) fn plan(
    snapshot: &Snapshot,
    ingresses: &[Served<'_>],
    parsed: &[Parsed],
    config: &RouteConfig,
    now: SystemTime,
    warnings: &mut Warnings,
) -> TlsPlan {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut c = Collector {
        snapshot,
        now,
        loaded: BTreeMap::new(),
        by_name: BTreeMap::new(),
    };
    for ((key, ingress), parsed) in ingresses.iter().zip(parsed) {
        if parsed.canary.is_none() {
            c.add_ingress(key, ingress, warnings);
        }
    }
    let mut default = Vec::new();
    if let Some(secret) = &config.default_certificate {
        default.extend(c.default_certificate(secret, warnings));
    }
    TlsPlan {
        hosts: c.hosts(),
        default: best_first(default),
    }
}

impl Collector<'_> {
    fn add_ingress(&mut self, key: &ObjectKey, ingress: &Ingress, warnings: &mut Warnings) {
        for (names, secret) in tls_names(ingress) {
            let Some(secret) = secret.filter(|s| !s.is_empty()) else {
                warnings.ingress(key, "tls entry has no secretName; skipped");
                continue;
            };
            let secret_key = ObjectKey::new(key.namespace.as_str(), secret);
            let Some(cert) = self.load(Some(key), &secret_key, warnings) else {
                continue;
            };
            for host in names {
                self.by_name
                    .entry(host)
                    .or_default()
                    .push(Arc::clone(&cert));
            }
        }
    }

    fn default_certificate(
        &mut self,
        secret: &ObjectKey,
        warnings: &mut Warnings,
    ) -> Option<Arc<CertificatePlan>> {
        if !self.snapshot.secrets.contains_key(secret) {
            warnings.add("Secret", secret, "default certificate secret not found");
            return None;
        }
        self.load(None, secret, warnings)
    }

    /// The certificate of a Secret (parsed once); `None` with a warning when unusable.
    fn load(
        &mut self,
        ingress: Option<&ObjectKey>,
        secret_key: &ObjectKey,
        warnings: &mut Warnings,
    ) -> Option<Arc<CertificatePlan>> {
        if let Some(loaded) = self.loaded.get(secret_key) {
            return loaded.clone();
        }
        let loaded = match self.snapshot.secrets.get(secret_key) {
            None => {
                if let Some(ingress) = ingress {
                    warnings.ingress(ingress, format!("secret {secret_key} not found"));
                }
                None
            }
            Some(secret) => match certificate(secret) {
                Ok((cert_pem, key_pem)) => {
                    Some(self.certificate_plan(ingress, secret_key, cert_pem, key_pem, warnings))
                }
                Err(why) => {
                    let message = format!(
                        "secret {secret_key} is not a valid kubernetes.io/tls secret: {why}"
                    );
                    match ingress {
                        Some(ingress) => warnings.ingress(ingress, message),
                        None => warnings.add(
                            "Secret",
                            secret_key,
                            format!("default certificate: {message}"),
                        ),
                    }
                    None
                }
            },
        };
        self.loaded.insert(secret_key.clone(), loaded.clone());
        loaded
    }

    fn certificate_plan(
        &self,
        ingress: Option<&ObjectKey>,
        secret_key: &ObjectKey,
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
        warnings: &mut Warnings,
    ) -> Arc<CertificatePlan> {
        let dates = leaf_validity(&cert_pem);
        let validity = match dates {
            None => Validity::Unknown,
            Some((not_before, _)) if self.now < not_before => Validity::NotYetValid,
            Some((_, not_after)) if self.now > not_after => Validity::Expired,
            Some(_) => Validity::Valid,
        };
        if let (Some((not_before, not_after)), Validity::Expired | Validity::NotYetValid) =
            (dates, validity)
        {
            let when = match validity {
                Validity::Expired => {
                    format!("expired at {}", sluice_model::time::rfc3339_utc(not_after))
                }
                _ => format!(
                    "is not valid before {}",
                    sluice_model::time::rfc3339_utc(not_before)
                ),
            };
            let message = format!(
                "secret {secret_key}: the certificate {when}; it is served only to names no valid certificate covers"
            );
            match ingress {
                Some(ingress) => warnings.ingress(ingress, message),
                None => warnings.add(
                    "Secret",
                    secret_key,
                    format!("default certificate: {message}"),
                ),
            }
        }
        Arc::new(CertificatePlan {
            secret: name(secret_key),
            ingress: ingress.map(name),
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            validity,
        })
    }

    /// Every listed name with its candidates (exact names also get the wildcards covering
    /// them, after their own), best first.
    fn hosts(&self) -> Vec<TlsHost> {
        let mut hosts: Vec<TlsHost> = self
            .by_name
            .iter()
            .map(|(host, own)| {
                let mut certs = own.clone();
                let wildcard = host
                    .split_once('.')
                    .filter(|_| !host.starts_with("*."))
                    .and_then(|(_, parent)| self.by_name.get(&format!("*.{parent}")));
                certs.extend(wildcard.into_iter().flatten().cloned());
                let name = match host.strip_prefix("*.") {
                    Some(parent) => HostMatch::Wildcard(parent.into()),
                    None => HostMatch::Exact(host.as_str().into()),
                };
                TlsHost {
                    name,
                    certificates: best_first(certs),
                }
            })
            .collect();
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        hosts
    }
}

/// Valid certificates first, then those whose dates could not be read, then expired or not
/// yet valid ones; each group in the given order; each Secret once.
fn best_first(certs: Vec<Arc<CertificatePlan>>) -> Vec<Arc<CertificatePlan>> {
    let mut seen = HashSet::new();
    let mut certs: Vec<Arc<CertificatePlan>> = certs
        .into_iter()
        .filter(|c| seen.insert(c.secret.clone()))
        .collect();
    certs.sort_by_key(|c| match c.validity {
        Validity::Valid => 0,
        Validity::Unknown => 1,
        Validity::Expired | Validity::NotYetValid => 2,
    });
    certs
}

/// `tls.crt` and `tls.key` of a `kubernetes.io/tls` Secret (`stringData` wins over `data`).
fn certificate(secret: &Secret) -> Result<(Vec<u8>, Vec<u8>), String> {
    if secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return Err(format!(
            "has type {:?}, want kubernetes.io/tls",
            secret.type_.as_deref().unwrap_or("")
        ));
    }
    let field = |name: &str| -> Option<Vec<u8>> {
        let from_string = secret.string_data.as_ref().and_then(|d| d.get(name));
        from_string
            .map(|s| s.as_bytes().to_vec())
            .or_else(|| secret.data.as_ref()?.get(name).map(|b| b.0.clone()))
    };
    let crt = field("tls.crt").ok_or("has no tls.crt")?;
    let key = field("tls.key").ok_or("has no tls.key")?;
    Ok((crt, key))
}

/// `notBefore` and `notAfter` (Unix seconds) of the first certificate of a PEM chain.
fn leaf_validity(pem: &[u8]) -> Option<(i64, i64)> {
    let der = rustls_pemfile::certs(&mut &pem[..]).next()?.ok()?;
    der_validity(&der)
}

/// One DER element: (tag, contents, what follows).
fn element(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Certificate → tbsCertificate → [version], serial, signature, issuer, validity.
fn der_validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert, _) = element(der).filter(|(t, ..)| *t == 0x30)?;
    let (_, tbs, _) = element(cert).filter(|(t, ..)| *t == 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.2;
    }
    for _ in 0..3 {
        rest = element(rest)?.2;
    }
    let (_, validity, _) = element(rest).filter(|(t, ..)| *t == 0x30)?;
    let (tag_before, before, rest) = element(validity)?;
    let (tag_after, after, _) = element(rest)?;
    Some((der_time(tag_before, before)?, der_time(tag_after, after)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) → Unix seconds.
fn der_time(tag: u8, value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if text.len() == 12 => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        0x18 if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let days = days_from_civil(year, field(0)?, field(2)?);
    Some(days * 86_400 + field(4)? * 3600 + field(6)? * 60 + field(8)?)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_conversions_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        // And back, through the shared formatter.
        let feb29 = days_from_civil(2000, 2, 29) * 86_400;
        assert_eq!(
            sluice_model::time::rfc3339_utc(feb29),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn der_times() {
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(der_time(0x18, b"20000229000000Z"), Some(951_782_400));
        assert_eq!(der_time(0x18, b"2000022900000Z"), None);
        assert_eq!(der_time(0x17, b"700101000000"), None);
    }
}
