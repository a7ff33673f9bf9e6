//! Writing `status.loadBalancer` of Ingresses sluice serves.

use std::net::IpAddr;

use k8s_openapi::api::networking::v1::Ingress;
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
pub async fn update_ingress_status(
    client: &Client,
    ingress: &ObjectKey,
    ips: &[IpAddr],
) -> Result<(), K8sError> {
    let api = Api::<Ingress>::namespaced(client.clone(), &ingress.namespace);
    let current = api
        .get_status(&ingress.name)
        .await
        .map_err(|source| K8sError::GetIngress {
            ingress: ingress.clone(),
            source,
        })?;
    if status_matches(&current, ips) {
        debug!(%ingress, "Ingress status already up to date");
        return Ok(());
    }
    let entries: Vec<_> = ips
        .iter()
        .map(|ip| json!({ "ip": ip.to_string() }))
        .collect();
    let patch = json!({ "status": { "loadBalancer": { "ingress": entries } } });
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
    debug!(%ingress, ?ips, "Ingress status written");
    Ok(())
}

/// Whether the Ingress's status lists exactly `ips` as plain IP entries.
fn status_matches(ingress: &Ingress, ips: &[IpAddr]) -> bool {
    let entries = ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
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
