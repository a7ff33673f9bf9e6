//! Which `kind`/`apiVersion` pairs sluice reads, and what to tell the user about near misses.
//!
//! Kinds that are simply not ours (Deployment, ConfigMap, any custom resource) are skipped
//! silently. A kind is reported when it is probably meant to be one of ours: a misspelling or
//! wrong case of one of our kinds, or a kind the API group it names does not have (for the
//! groups sluice reads, where the full list is known).

use sluice_model::SnapshotKind;

/// The kinds sluice reads, as written in manifests.
pub(crate) const OURS: [(&str, SnapshotKind); 6] = [
    ("Service", SnapshotKind::Service),
    ("EndpointSlice", SnapshotKind::EndpointSlice),
    ("Node", SnapshotKind::Node),
    ("Ingress", SnapshotKind::Ingress),
    ("IngressClass", SnapshotKind::IngressClass),
    ("Secret", SnapshotKind::Secret),
];

pub(crate) const OURS_TEXT: &str = "Service, EndpointSlice, Node, Ingress, IngressClass and Secret";

pub(crate) fn ours(kind: &str) -> Option<SnapshotKind> {
    OURS.iter().find(|(name, _)| *name == kind).map(|&(_, k)| k)
}

pub(crate) fn name(kind: SnapshotKind) -> &'static str {
    OURS.iter()
        .find(|(_, k)| *k == kind)
        .map_or("?", |&(name, _)| name)
}

pub(crate) fn namespaced(kind: SnapshotKind) -> bool {
    !matches!(kind, SnapshotKind::Node | SnapshotKind::IngressClass)
}

/// The `apiVersion` sluice decodes each kind from.
pub(crate) fn api_version(kind: SnapshotKind) -> &'static str {
    match kind {
        SnapshotKind::Service | SnapshotKind::Node | SnapshotKind::Secret => "v1",
        SnapshotKind::EndpointSlice => "discovery.k8s.io/v1",
        SnapshotKind::Ingress | SnapshotKind::IngressClass => "networking.k8s.io/v1",
    }
}

/// What to change when a kind of ours comes with another `apiVersion`.
pub(crate) fn api_version_advice(kind: SnapshotKind, api_version: &str) -> &'static str {
    match (kind, api_version) {
        (SnapshotKind::Ingress, "networking.k8s.io/v1beta1" | "extensions/v1beta1") => {
            "this API was removed in Kubernetes 1.22; convert to `apiVersion: networking.k8s.io/v1`: \
             `backend.serviceName`/`backend.servicePort` become `backend.service.name` and \
             `backend.service.port.number` (or `backend.service.port.name` for a named port), \
             `spec.backend` becomes `spec.defaultBackend`, and every path needs a `pathType` \
             (Prefix, Exact or ImplementationSpecific)"
        }
        (SnapshotKind::IngressClass, "networking.k8s.io/v1beta1") => {
            "this API was removed in Kubernetes 1.22; the fields are unchanged, write \
             `apiVersion: networking.k8s.io/v1`"
        }
        (SnapshotKind::EndpointSlice, "discovery.k8s.io/v1beta1") => {
            "this API was removed in Kubernetes 1.25; convert to `apiVersion: \
             discovery.k8s.io/v1`: an endpoint's `topology` map is replaced by `nodeName` \
             (was topology[kubernetes.io/hostname]) and `zone` (was \
             topology[topology.kubernetes.io/zone])"
        }
        (SnapshotKind::Service | SnapshotKind::Node | SnapshotKind::Secret, _) => {
            "write `apiVersion: v1`"
        }
        (SnapshotKind::EndpointSlice, _) => "write `apiVersion: discovery.k8s.io/v1`",
        (SnapshotKind::Ingress | SnapshotKind::IngressClass, _) => {
            "write `apiVersion: networking.k8s.io/v1`"
        }
    }
}

/// Every kind of the API groups sluice reads (plus `List`), so a kind they do not have is a
/// mistake rather than something that is not ours.
fn group_kinds(api_version: &str) -> Option<&'static [&'static str]> {
    Some(match api_version {
        "v1" => &[
            "Binding",
            "ComponentStatus",
            "ConfigMap",
            "Endpoints",
            "Event",
            "LimitRange",
            "List",
            "Namespace",
            "Node",
            "PersistentVolume",
            "PersistentVolumeClaim",
            "Pod",
            "PodTemplate",
            "ReplicationController",
            "ResourceQuota",
            "Secret",
            "Service",
            "ServiceAccount",
            "Status",
        ],
        "discovery.k8s.io/v1" => &["EndpointSlice"],
        "networking.k8s.io/v1" => &[
            "Ingress",
            "IngressClass",
            "IPAddress",
            "NetworkPolicy",
            "ServiceCIDR",
        ],
        _ => return None,
    })
}

/// Short names and plurals kubectl accepts on the command line but that are not kinds.
const ALIASES: [(&str, &str); 8] = [
    ("svc", "Service"),
    ("eps", "EndpointSlice"),
    ("no", "Node"),
    ("ing", "Ingress"),
    ("ingressclasses", "IngressClass"),
    ("endpointslices", "EndpointSlice"),
    ("services", "Service"),
    ("secrets", "Secret"),
];

/// Which of our kinds `kind` probably means, if any.
pub(crate) fn suggestion(kind: &str) -> Option<&'static str> {
    let lower = kind.to_ascii_lowercase();
    if let Some(&(_, ours)) = ALIASES.iter().find(|(alias, _)| *alias == lower) {
        return Some(ours);
    }
    OURS.iter().map(|&(name, _)| name).find(|name| {
        let allowed = if name.len() <= 5 { 1 } else { 2 };
        name.eq_ignore_ascii_case(kind)
            || edit_distance(&name.to_ascii_lowercase(), &lower) <= allowed
    })
}

/// Is `api_version` one of the groups sluice reads (any version), or missing?
fn could_be_ours(api_version: Option<&str>) -> bool {
    let Some(api_version) = api_version else {
        return true;
    };
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    matches!(
        group,
        "" | "discovery.k8s.io" | "networking.k8s.io" | "extensions"
    )
}

/// The verdict on a kind that is not exactly one of ours.
pub(crate) enum Foreign {
    /// Not ours: skip silently.
    NotOurs,
    Misspelled(&'static str),
    UnknownInGroup,
}

pub(crate) fn judge_foreign(kind: &str, api_version: Option<&str>) -> Foreign {
    let known_in_group = api_version
        .and_then(group_kinds)
        .map(|kinds| kinds.contains(&kind));
    if known_in_group == Some(true) || !could_be_ours(api_version) {
        return Foreign::NotOurs;
    }
    if let Some(ours) = suggestion(kind) {
        return Foreign::Misspelled(ours);
    }
    match known_in_group {
        Some(false) => Foreign::UnknownInGroup,
        _ => Foreign::NotOurs,
    }
}

/// Optimal string alignment distance (edits, including swapping two neighbours).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > 2 || a.len() > 64 || b.len() > 64 {
        return usize::MAX; // too different to be a typo; also bounds the work
    }
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_and_wrong_case_suggest_our_kind() {
        for (typo, meant) in [
            ("Servcie", "Service"),
            ("service", "Service"),
            ("SERVICE", "Service"),
            ("Ingres", "Ingress"),
            ("EndpointSlices", "EndpointSlice"),
            ("Endpointslice", "EndpointSlice"),
            ("Noed", "Node"),
            ("Secrte", "Secret"),
            ("IngressClas", "IngressClass"),
            ("svc", "Service"),
        ] {
            assert!(
                matches!(judge_foreign(typo, Some("v1")), Foreign::Misspelled(k) if k == meant),
                "{typo}"
            );
            assert!(
                matches!(judge_foreign(typo, None), Foreign::Misspelled(k) if k == meant),
                "{typo} without apiVersion"
            );
        }
    }

    #[test]
    fn kinds_that_are_not_ours_stay_silent() {
        for (kind, api_version) in [
            ("Deployment", Some("apps/v1")),
            ("ConfigMap", Some("v1")),
            ("Endpoints", Some("v1")),
            ("Role", Some("rbac.authorization.k8s.io/v1")),
            ("Role", None),
            ("NetworkPolicy", Some("networking.k8s.io/v1")),
            ("ServiceMonitor", Some("monitoring.coreos.com/v1")),
            // A custom resource whose name happens to look like one of ours.
            ("Nodes", Some("example.com/v1")),
            ("Deployment", Some("extensions/v1beta1")),
        ] {
            assert!(
                matches!(judge_foreign(kind, api_version), Foreign::NotOurs),
                "{kind} {api_version:?}"
            );
        }
    }

    #[test]
    fn a_kind_missing_from_a_group_we_read_is_reported() {
        assert!(matches!(
            judge_foreign("Foo", Some("v1")),
            Foreign::UnknownInGroup
        ));
        assert!(matches!(
            judge_foreign("Gateway", Some("networking.k8s.io/v1")),
            Foreign::UnknownInGroup
        ));
    }
}
