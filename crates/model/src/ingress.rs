//! Which Secrets an Ingress needs. Here, below both the sources (which keep the data only of
//! referenced Secrets) and the route planner (which reads them), so that both name the same
//! Secrets: a Secret the planner reads but a source does not keep would silently be missing.

use k8s_openapi::api::networking::v1::Ingress;

use crate::ObjectKey;

/// Prefix of the Ingress annotations sluice reads (ingress-nginx's).
pub const ANNOTATION_PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// Type of the Secrets `spec.tls` names (a `proxy-ssl-secret` may be one too); one of the
/// two Secret types the sources read.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// Type of the Secrets `auth-secret` (htpasswd) and `proxy-ssl-secret` (CA) usually are, and
/// what the API server makes of a Secret created without a type; the other Secret type the
/// sources read. Service-account tokens, Helm releases, registry credentials and the like are
/// never read, even when an annotation names one.
pub const OPAQUE_SECRET_TYPE: &str = "Opaque";

/// The annotations (after [`ANNOTATION_PREFIX`]) whose value names a Secret.
pub const SECRET_ANNOTATIONS: [&str; 2] = ["auth-secret", "proxy-ssl-secret"];

/// The Secrets an Ingress needs, sorted and without duplicates: its `spec.tls[].secretName`s
/// (in its namespace), its `auth-secret` and its `proxy-ssl-secret` (see
/// [`annotation_secret`]). Empty names are left out.
pub fn referenced_secrets(key: &ObjectKey, ingress: &Ingress) -> Vec<ObjectKey> {
    let tls = ingress
        .spec
        .iter()
        .flat_map(|s| s.tls.iter().flatten())
        .filter_map(|t| t.secret_name.as_deref())
        .map(|name| ObjectKey::new(key.namespace.as_str(), name));
    let annotations = ingress.metadata.annotations.as_ref();
    let by_annotation = SECRET_ANNOTATIONS
        .iter()
        .filter_map(|name| annotations?.get(&format!("{ANNOTATION_PREFIX}{name}")))
        .map(|value| annotation_secret(key, value));
    let mut keys: Vec<ObjectKey> = tls
        .chain(by_annotation)
        .filter(|k| !k.namespace.is_empty() && !k.name.is_empty())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The Secret an annotation value names: `NAMESPACE/NAME`, or `NAME` in the Ingress's
/// namespace (surrounding whitespace ignored).
pub fn annotation_secret(ingress: &ObjectKey, value: &str) -> ObjectKey {
    let value = value.trim();
    match value.split_once('/') {
        Some((namespace, name)) => ObjectKey::new(namespace, name),
        None => ObjectKey::new(ingress.namespace.as_str(), value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn refs(tls: Value, annotations: Value) -> Vec<String> {
        let ingress: Ingress = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "web", "annotations": annotations},
            "spec": {"tls": tls}
        }))
        .expect("valid test object");
        referenced_secrets(&ObjectKey::new("shop", "web"), &ingress)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const AUTH: &str = "nginx.ingress.kubernetes.io/auth-secret";
    const PROXY_SSL: &str = "nginx.ingress.kubernetes.io/proxy-ssl-secret";

    #[test]
    fn referenced_secrets_are_the_tls_auth_and_proxy_ssl_ones() {
        let keys = refs(
            json!([{"secretName": "web-tls"}]),
            json!({AUTH: "users", PROXY_SSL: "certs/backend-ca"}),
        );
        assert_eq!(keys, ["certs/backend-ca", "shop/users", "shop/web-tls"]);
    }

    #[test]
    fn referenced_secrets_table() {
        let cases: [(&str, Value, Value, &[&str]); 10] = [
            ("nothing", json!([]), json!({}), &[]),
            (
                "tls only, empty name skipped",
                json!([{"secretName": "a"}, {"hosts": ["x"]}, {"secretName": ""}]),
                json!({}),
                &["shop/a"],
            ),
            (
                "auth-secret bare name",
                json!([]),
                json!({AUTH: "basic-auth"}),
                &["shop/basic-auth"],
            ),
            (
                "auth-secret in another namespace",
                json!([]),
                json!({AUTH: "other-ns/basic-auth"}),
                &["other-ns/basic-auth"],
            ),
            (
                "proxy-ssl-secret",
                json!([]),
                json!({PROXY_SSL: "certs/ca"}),
                &["certs/ca"],
            ),
            (
                "whitespace around the value",
                json!([]),
                json!({AUTH: " users \n", PROXY_SSL: "\tcerts/ca "}),
                &["certs/ca", "shop/users"],
            ),
            (
                "duplicates named once",
                json!([{"secretName": "both"}, {"secretName": "both"}]),
                json!({AUTH: "both", PROXY_SSL: "shop/both"}),
                &["shop/both"],
            ),
            (
                "empty values skipped",
                json!([]),
                json!({AUTH: "", PROXY_SSL: "certs/"}),
                &[],
            ),
            (
                "other annotations are not references",
                json!([]),
                json!({"nginx.ingress.kubernetes.io/auth-url": "x", "auth-secret": "y"}),
                &[],
            ),
            (
                "all three",
                json!([{"secretName": "tls"}]),
                json!({AUTH: "users", PROXY_SSL: "certs/ca"}),
                &["certs/ca", "shop/tls", "shop/users"],
            ),
        ];
        for (case, tls, annotations, want) in cases {
            assert_eq!(refs(tls, annotations), want, "{case}");
        }
    }

    #[test]
    fn annotation_secret_reads_both_forms() {
        let ingress = ObjectKey::new("shop", "web");
        assert_eq!(
            annotation_secret(&ingress, "users"),
            ObjectKey::new("shop", "users")
        );
        assert_eq!(
            annotation_secret(&ingress, " certs/ca "),
            ObjectKey::new("certs", "ca")
        );
    }
}
