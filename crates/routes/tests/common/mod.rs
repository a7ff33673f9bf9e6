//! Snapshots from JSON or YAML objects, and the plan with its warnings as text.
#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use sluice_model::{NodeInfo, Snapshot};
use sluice_routes::{RouteConfig, RoutePlan};

/// 2030-01-01T00:00:00Z: "now" for every test (certificates are made around it).
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

pub fn snapshot(objects: &[Value]) -> Snapshot {
    Snapshot::from_json_objects(objects.iter().cloned()).unwrap()
}

/// Every document of a multi-document YAML text, as JSON values.
pub fn yaml_objects(text: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

pub fn plan_with(objects: &[Value], config: &RouteConfig) -> (RoutePlan, Vec<String>) {
    let (plan, warnings) =
        sluice_routes::plan(&snapshot(objects), &NodeInfo::default(), config, now());
    (plan, warnings.iter().map(ToString::to_string).collect())
}

/// Our class `sluice`, services a..d (endpoints 10.0.0.1..4:8080) and `extra`.
pub fn plan(extra: Vec<Value>) -> (RoutePlan, Vec<String>) {
    let mut objects = vec![class("sluice", "sluice.dev/ingress", false)];
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        objects.extend(service(name, &format!("10.0.0.{}", i + 1)));
    }
    objects.extend(extra);
    plan_with(&objects, &RouteConfig::default())
}

pub fn class(name: &str, controller: &str, default: bool) -> Value {
    json!({"kind": "IngressClass", "metadata": {"name": name, "annotations":
        {"ingressclass.kubernetes.io/is-default-class": if default { "true" } else { "false" }}},
        "spec": {"controller": controller}})
}

/// A service `name` with port 80 (named "http") → 8080, one ready endpoint `ip`.
pub fn service(name: &str, ip: &str) -> Vec<Value> {
    vec![
        json!({"kind": "Service", "metadata": {"namespace": "default", "name": name},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        json!({"kind": "EndpointSlice", "metadata": {"namespace": "default", "name": format!("{name}-abc"),
            "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]}),
    ]
}

pub fn path(p: &str, kind: &str, svc: &str) -> Value {
    json!({"path": p, "pathType": kind, "backend": {"service": {"name": svc, "port": {"number": 80}}}})
}

pub fn rule(host: &str, paths: Vec<Value>) -> Value {
    if host.is_empty() {
        return json!({"http": {"paths": paths}});
    }
    json!({"host": host, "http": {"paths": paths}})
}

/// An Ingress of class `sluice` with one rule.
pub fn ingress(name: &str, host: &str, paths: Vec<Value>) -> Value {
    json!({"kind": "Ingress", "metadata": {"namespace": "default", "name": name},
        "spec": {"ingressClassName": "sluice", "rules": [rule(host, paths)]}})
}

/// Sets `nginx.ingress.kubernetes.io/<key>` annotations.
pub fn annotate(mut ingress: Value, pairs: &[(&str, &str)]) -> Value {
    for (k, v) in pairs {
        ingress["metadata"]["annotations"][format!("nginx.ingress.kubernetes.io/{k}")] = json!(v);
    }
    ingress
}

pub fn created(mut ingress: Value, timestamp: &str) -> Value {
    ingress["metadata"]["creationTimestamp"] = json!(timestamp);
    ingress
}

pub fn default_backend(mut ingress: Value, svc: &str) -> Value {
    ingress["spec"]["defaultBackend"] = json!({"service": {"name": svc, "port": {"number": 80}}});
    ingress
}

pub fn with_tls(mut ingress: Value, hosts: &[&str], secret: &str) -> Value {
    let entry = if hosts.is_empty() {
        json!({"secretName": secret})
    } else {
        json!({"hosts": hosts, "secretName": secret})
    };
    match ingress["spec"]["tls"].as_array_mut() {
        Some(list) => list.push(entry),
        None => ingress["spec"]["tls"] = json!([entry]),
    }
    ingress
}

/// A `kubernetes.io/tls` Secret with a self-signed certificate valid from `from` to `to`
/// (years, January 1st).
pub fn tls_secret(name: &str, hosts: &[&str], from: i32, to: i32) -> Value {
    let mut params =
        rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(to, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    json!({"kind": "Secret", "metadata": {"namespace": "default", "name": name},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert.pem(), "tls.key": key.serialize_pem()}})
}

/// The plan's text for one host (`host NAME` up to the next host or section).
pub fn host_text(plan: &RoutePlan, host: &str) -> String {
    plan.hosts
        .iter()
        .find(|h| h.host.to_string() == host)
        .map(ToString::to_string)
        .unwrap_or_else(|| panic!("no host {host} in\n{plan}"))
}
