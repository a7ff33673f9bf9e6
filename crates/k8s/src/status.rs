//! Writing `status.loadBalancer` of Ingresses sluice serves.

use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{
    Ingress, IngressLoadBalancerIngress as LoadBalancerIngress,
};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sluice_model::ObjectKey;
use tracing::debug;

use crate::K8sError;

/// Writes `status.loadBalancer.ingress` (one `{ip}` entry per address, in the given order) of
/// one Ingress with a JSON merge patch on its status subresource. Reads the status first and
/// writes nothing when it already lists exactly these IPs (in any order, without hostnames or
/// ports), so calling this on every sync does not churn the object.
///
/// This is one write without retries, on any node;
/// [`IngressStatusWriter`](crate::IngressStatusWriter) is the leader-only, retrying writer
/// built on it.
pub async fn update_ingress_status(
    client: &Client,
    ingress: &ObjectKey,
    ips: &[IpAddr],
) -> Result<(), K8sError> {
    let api = Api::<Ingress>::namespaced(client.clone(), &ingress.namespace);
    ensure_status(&api, ingress, &StatusTarget::Exactly(ips.to_vec())).await?;
    Ok(())
}

/// What an Ingress's `status.loadBalancer.ingress` must become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StatusTarget {
    /// Exactly these addresses as plain `{ip}` entries (an Ingress we serve).
    Exactly(Vec<IpAddr>),
    /// Whatever it lists, minus plain entries with these addresses (an Ingress we no longer
    /// serve: our addresses go, other controllers' entries stay).
    Without(Vec<IpAddr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusWrite {
    Written,
    /// The status already was what the target asks for; nothing was sent.
    Unchanged,
}

/// Reads the status of `ingress` and patches it if it differs from `target`.
pub(crate) async fn ensure_status(
    api: &Api<Ingress>,
    ingress: &ObjectKey,
    target: &StatusTarget,
) -> Result<StatusWrite, K8sError> {
    let current = api
        .get_status(&ingress.name)
        .await
        .map_err(|source| K8sError::GetIngress {
            ingress: ingress.clone(),
            source,
        })?;
    let patch = match target {
        StatusTarget::Exactly(ips) => {
            if status_matches(&current, ips) {
                debug!(%ingress, "Ingress status already up to date");
                return Ok(StatusWrite::Unchanged);
            }
            let entries: Vec<_> = ips
                .iter()
                .map(|ip| json!({ "ip": ip.to_string() }))
                .collect();
            json!({ "status": { "loadBalancer": { "ingress": entries } } })
        }
        StatusTarget::Without(ips) => {
            let entries = lb_entries(&current);
            let kept: Vec<&LoadBalancerIngress> = entries
                .iter()
                .filter(|entry| !is_plain_entry_of(entry, ips))
                .collect();
            if kept.len() == entries.len() {
                return Ok(StatusWrite::Unchanged);
            }
            // Read-modify-write: the resourceVersion makes the API server refuse the patch
            // (409) if someone changed the status since we read it.
            json!({
                "metadata": { "resourceVersion": current.metadata.resource_version },
                "status": { "loadBalancer": { "ingress": kept } },
            })
        }
    };
    api.patch_status(
        &ingress.name,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|source| K8sError::PatchIngressStatus {
        ingress: ingress.clone(),
        source,
    })?;
    debug!(%ingress, ?target, "Ingress status written");
    Ok(StatusWrite::Written)
}

fn lb_entries(ingress: &Ingress) -> &[LoadBalancerIngress] {
    ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default()
}

/// A `{ip}` entry (no hostname) whose address is one of `ips`.
fn is_plain_entry_of(entry: &LoadBalancerIngress, ips: &[IpAddr]) -> bool {
    entry.hostname.is_none()
        && entry
            .ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .is_some_and(|ip| ips.contains(&ip))
}

/// Whether the Ingress's status lists any of `ips` as a plain entry (so clearing would change
/// it).
pub(crate) fn status_lists_any(ingress: &Ingress, ips: &[IpAddr]) -> bool {
    lb_entries(ingress)
        .iter()
        .any(|entry| is_plain_entry_of(entry, ips))
}

/// Whether the Ingress's status lists exactly `ips` as plain IP entries.
fn status_matches(ingress: &Ingress, ips: &[IpAddr]) -> bool {
    let entries = lb_entries(ingress);
    let mut current = Vec::with_capacity(entries.len());
    for entry in entries {
        let plain = entry.hostname.is_none() && entry.ports.as_ref().is_none_or(Vec::is_empty);
        match entry.ip.as_deref().map(str::parse::<IpAddr>) {
            Some(Ok(ip)) if plain => current.push(ip),
            _ => return false,
        }
    }
    let mut wanted = ips.to_vec();
    current.sort();
    wanted.sort();
    current == wanted
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(status: serde_json::Value) -> Ingress {
        serde_json::from_value(json!({
            "metadata": {"namespace": "web", "name": "shop"},
            "status": status
        }))
        .expect("valid test object")
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("test ip")).collect()
    }

    #[test]
    fn matching_ignores_order() {
        let ing =
            ingress(json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.1"}]}}));
        assert!(status_matches(&ing, &ips(&["10.0.0.1", "10.0.0.2"])));
        assert!(!status_matches(&ing, &ips(&["10.0.0.1"])));
        assert!(!status_matches(
            &ing,
            &ips(&["10.0.0.1", "10.0.0.2", "fd00::1"])
        ));
    }

    #[test]
    fn empty_status_matches_no_ips_only() {
        assert!(status_matches(&ingress(json!({})), &[]));
        assert!(status_matches(&ingress(json!({"loadBalancer": {}})), &[]));
        assert!(!status_matches(&ingress(json!({})), &ips(&["10.0.0.1"])));
    }

    #[test]
    fn hostname_entries_do_not_match() {
        let ing = ingress(
            json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1", "hostname": "lb.example"}]}}),
        );
        assert!(!status_matches(&ing, &ips(&["10.0.0.1"])));
    }
}
