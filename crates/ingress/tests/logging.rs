//! What the proxy logs: route-table problems are returned to the caller (which logs each new
//! one once) rather than logged again on every rebuild, and client faults are not warnings.
//! Current-thread runtimes: the proxy's tasks log on the test thread, where the capture is.

mod common;

use common::*;
use serde_json::json;
use sluice_ingress::{IngressConfig, IngressProxy};

#[tokio::test]
async fn route_table_warnings_are_returned_and_not_logged_by_each_rebuild() {
    let logs = CapturedLogs::start();
    let proxy = IngressProxy::new(IngressConfig::default());
    let objects = vec![
        ingress_class(),
        ingress(
            "broken",
            vec![rule("h", vec![path("/", "Prefix", "missing")])],
        ),
    ];
    for _ in 0..3 {
        let warnings = proxy.apply(&snapshot(&objects));
        let text: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            ["Ingress default/broken: service default/missing not found"]
        );
    }
    assert!(logs.warnings().is_empty(), "{:#?}", logs.warnings());
}

#[tokio::test]
async fn client_body_faults_are_counted_and_logged_at_debug_only() {
    let logs = CapturedLogs::start();
    let backend = echo("svc").await;
    let mut objects = vec![
        ingress_class(),
        json!({"kind": "Ingress", "metadata": {"namespace": "default", "name": "i"},
            "spec": {"ingressClassName": "sluice", "rules": [rule("h", vec![path("/", "Prefix", "svc")])]}}),
    ];
    objects.extend(service("svc", &[backend.addr.port()]));
    let p = start(IngressConfig::default(), &objects).await;
    for _ in 0..5 {
        let reply = raw_exchange(
            p.http,
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nnot-hex\r\n",
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    }
    assert_eq!(p.proxy.stats().client_body_errors, 5);
    assert!(logs.warnings().is_empty(), "{:#?}", logs.warnings());
    assert!(
        logs.text().contains("request body"),
        "no debug line: {}",
        logs.text()
    );
}
