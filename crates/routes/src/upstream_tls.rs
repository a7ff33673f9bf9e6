//! `backend-protocol: HTTPS|GRPCS` and the `proxy-ssl-*` annotations: how the proxy speaks TLS
//! to the endpoints.
//!
//! As ingress-nginx: the endpoint's certificate is not verified unless `proxy-ssl-verify` is
//! `on`; `proxy-ssl-secret` (`namespace/name`) holds the trusted CAs (`ca.crt`) and optionally a
//! client certificate (`tls.crt`, `tls.key`); `proxy-ssl-server-name: on` sends SNI. The name
//! verified is `proxy-ssl-name`, else `SERVICE.NAMESPACE.svc` (ingress-nginx would check the
//! upstream's internal name, which no certificate carries). Verification fails closed: asked
//! for without a usable CA, every connection fails (502) and the Ingress is warned about.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use sluice_model::Snapshot;
use sluice_model::ingress::annotation_secret;
use sluice_plan::{BackendProtocol, UpstreamTls};

use crate::annotations::Reader;

/// The upstream TLS settings of an Ingress (`None` unless its backend protocol uses TLS).
/// The name is left empty when `proxy-ssl-name` is not set: the route fills in its Service.
pub(crate) fn upstream_tls(
    r: &mut Reader<'_, '_>,
    protocol: BackendProtocol,
    snapshot: &Snapshot,
) -> Option<UpstreamTls> {
    let tls = matches!(protocol, BackendProtocol::Https | BackendProtocol::Grpcs);
    if !tls {
        for name in PROXY_SSL {
            if r.get(name).is_some() {
                r.warn(
                    name,
                    "has no effect unless backend-protocol is HTTPS or GRPCS; ignored",
                );
            }
        }
        return None;
    }
    let mut settings = UpstreamTls {
        verify: r.on_off("proxy-ssl-verify"),
        secret: None,
        ca_pem: None,
        client_cert: None,
        name: r.get("proxy-ssl-name").unwrap_or("").to_owned(),
        send_sni: r.on_off("proxy-ssl-server-name"),
    };
    if let Some(value) = r.get("proxy-ssl-secret").map(str::to_owned) {
        read_secret(r, &value, snapshot, &mut settings);
    }
    if settings.verify && settings.ca_pem.is_none() {
        r.warn(
            "proxy-ssl-verify",
            "is on but no proxy-ssl-secret with ca.crt is usable; every connection to the endpoints fails (502)",
        );
    }
    Some(settings)
}

/// The annotations read here.
pub(crate) const PROXY_SSL: &[&str] = &[
    "proxy-ssl-verify",
    "proxy-ssl-secret",
    "proxy-ssl-name",
    "proxy-ssl-server-name",
];

/// `ca.crt`, `tls.crt` and `tls.key` of the `proxy-ssl-secret`.
fn read_secret(
    r: &mut Reader<'_, '_>,
    value: &str,
    snapshot: &Snapshot,
    settings: &mut UpstreamTls,
) {
    // ingress-nginx requires `namespace/name`; a bare name is taken in the Ingress's namespace.
    let key = annotation_secret(r.key, value);
    settings.secret = Some(crate::name(&key));
    let Some(secret) = snapshot.secrets.get(&key) else {
        r.warn(
            "proxy-ssl-secret",
            format_args!("names secret {key}, which is not found"),
        );
        return;
    };
    settings.ca_pem = field(secret, "ca.crt").map(Arc::from);
    if settings.ca_pem.is_none() {
        r.warn(
            "proxy-ssl-secret",
            format_args!("secret {key} has no ca.crt"),
        );
    }
    match (field(secret, "tls.crt"), field(secret, "tls.key")) {
        (Some(crt), Some(key)) => settings.client_cert = Some((crt.into(), key.into())),
        (None, None) => {}
        _ => r.warn(
            "proxy-ssl-secret",
            format_args!(
                "secret {key} has only one of tls.crt and tls.key; no client certificate is sent"
            ),
        ),
    }
}

/// A Secret field from `stringData` or `data`; `None` when absent or empty.
fn field(secret: &Secret, name: &str) -> Option<Vec<u8>> {
    let from_string = secret.string_data.as_ref().and_then(|d| d.get(name));
    from_string
        .map(|s| s.as_bytes().to_vec())
        .or_else(|| secret.data.as_ref()?.get(name).map(|b| b.0.clone()))
        .filter(|v| !v.is_empty())
}
