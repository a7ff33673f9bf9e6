//! The shipped manifests (manifests/*.yaml) agree with the binary: flags and variables it
//! reads, the paths it uses, the probes it answers.

use clap::Parser as _;
use serde::Deserialize as _;
use serde_yaml::Value;

use crate::cli::{Cli, Command};

fn manifest(file: &str) -> Value {
    let path = format!("{}/../../manifests/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_daemonset_runs_the_agent_as_configured_in_one_place() {
    let ds = manifest("daemonset.yaml");
    let config = manifest("config.yaml");
    let pod = &ds["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(pod["hostNetwork"], Value::Bool(true));
    assert_eq!(
        pod["dnsPolicy"], "Default",
        "must resolve before cluster DNS works"
    );
    assert_eq!(pod["tolerations"][0]["operator"], "Exists");

    // The ConfigMap the user edits is the one the DaemonSet reads, and holds the API server.
    assert_eq!(
        container["envFrom"][0]["configMapRef"]["name"],
        config["metadata"]["name"]
    );
    let data = &config["data"];
    for key in [
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "SLUICE_CLUSTER_CIDR",
    ] {
        assert!(data[key].as_str().is_some_and(|v| !v.is_empty()), "{key}");
    }
    let namespace = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_NAMESPACE")
        .expect("POD_NAMESPACE");
    assert_eq!(
        namespace["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );

    // Its args (plus the ConfigMap's cluster CIDR) are valid flags.
    let mut argv = vec!["sluice".to_owned()];
    argv.extend(strings(&container["args"]));
    argv.push(format!(
        "--cluster-cidr={}",
        data["SLUICE_CLUSTER_CIDR"].as_str().unwrap()
    ));
    let Command::Agent(args) = Cli::try_parse_from(&argv).expect("valid flags").command else {
        panic!("{argv:?}: the agent command");
    };
    let agent = args
        .validate_with_hostname(|| Some("node-1".into()))
        .expect("valid configuration");

    // The paths it uses are mounted, and the probes are the endpoints it serves.
    let mounts: Vec<String> = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap().to_owned())
        .collect();
    let mounted = |path: &std::path::Path| mounts.iter().any(|m| path.starts_with(m));
    assert!(
        mounted(&agent.ebpf.cgroup_path),
        "{:?}",
        agent.ebpf.cgroup_path
    );
    assert!(
        mounted(&agent.ebpf.bpffs_path),
        "{:?}",
        agent.ebpf.bpffs_path
    );
    let socket = agent.cluster.admin_socket.as_deref().expect("admin socket");
    assert!(mounted(socket), "{socket:?}");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            container[probe]["httpGet"]["port"].as_u64(),
            Some(u64::from(agent.healthz_bind.port()))
        );
    }
    // Restarts without failures: the new pod starts next to the old one (no hostPort may
    // keep it Pending), the handover socket is on the hostPath both pods share, and the old
    // pod gets longer than the drain timeout to finish.
    let rolling = &ds["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!(
        (
            rolling["maxSurge"].as_u64(),
            rolling["maxUnavailable"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert!(
        container["ports"].is_null(),
        "hostPorts block the surge pod"
    );
    assert!(
        ds["spec"]["minReadySeconds"].as_u64() >= Some(2),
        "an early readiness answer from the old agent must not retire it"
    );
    assert!(mounted(&crate::handover::socket_path(socket)));
    let drain = agent.ingress.as_ref().expect("ingress").shutdown_grace;
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace > drain.as_secs(), "{grace} s <= drain {drain:?}");
    assert_eq!(
        container["securityContext"]["privileged"],
        Value::Bool(false)
    );
    let added = strings(&container["securityContext"]["capabilities"]["add"]);
    assert_eq!(
        added,
        ["NET_ADMIN", "BPF", "PERFMON", "NET_BIND_SERVICE", "NET_RAW"]
    );
}

/// The DaemonSet's security context and the RBAC rules grant what the agent uses, and no
/// more: no privileged mode or escalation, a runtime seccomp profile, the five capabilities;
/// reads are list/watch (get only where the agent GETs), writes only status subresources,
/// Events and the agent's own Leases, and nothing deletes or touches a spec.
#[test]
fn the_manifests_grant_least_privilege() {
    let ds = manifest("daemonset.yaml");
    let security = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(security["privileged"], Value::Bool(false));
    assert_eq!(security["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);

    let text = std::fs::read_to_string(format!(
        "{}/../../manifests/rbac.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut granted = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc = Value::deserialize(doc).unwrap();
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        for rule in doc["rules"].as_sequence().into_iter().flatten() {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        granted.push(format!("{kind} {group}/{resource} {verb}"));
                    }
                }
            }
        }
    }
    granted.sort();
    let want = [
        "ClusterRole /nodes list",
        "ClusterRole /nodes watch",
        "ClusterRole /secrets get",
        "ClusterRole /secrets list",
        "ClusterRole /secrets watch",
        "ClusterRole /services list",
        "ClusterRole /services watch",
        "ClusterRole /services/status patch",
        "ClusterRole discovery.k8s.io/endpointslices list",
        "ClusterRole discovery.k8s.io/endpointslices watch",
        "ClusterRole events.k8s.io/events create",
        "ClusterRole events.k8s.io/events patch",
        "ClusterRole networking.k8s.io/ingressclasses list",
        "ClusterRole networking.k8s.io/ingressclasses watch",
        "ClusterRole networking.k8s.io/ingresses list",
        "ClusterRole networking.k8s.io/ingresses watch",
        "ClusterRole networking.k8s.io/ingresses/status get",
        "ClusterRole networking.k8s.io/ingresses/status patch",
        "ClusterRole sluice.dev/loadbalancerippools list",
        "ClusterRole sluice.dev/loadbalancerippools watch",
        "ClusterRole sluice.dev/loadbalancerippools/status patch",
        "Role coordination.k8s.io/leases create",
        "Role coordination.k8s.io/leases get",
        "Role coordination.k8s.io/leases list",
        "Role coordination.k8s.io/leases update",
        "Role coordination.k8s.io/leases watch",
    ];
    assert_eq!(granted, want);
    // Spelled out, so that a widened rule is seen even if `want` is edited along with it.
    for grant in &granted {
        let (_, verb) = grant.rsplit_once(' ').unwrap();
        assert!(
            ![
                "delete",
                "deletecollection",
                "escalate",
                "bind",
                "impersonate",
                "*"
            ]
            .contains(&verb),
            "{grant}"
        );
        assert!(!grant.contains('*'), "no wildcards: {grant}");
        let write = ["create", "update", "patch"].contains(&verb);
        let resource = grant.split(' ').nth(1).unwrap();
        assert!(
            !write
                || resource.ends_with("/status")
                || resource == "events.k8s.io/events"
                || grant.starts_with("Role coordination.k8s.io/leases"),
            "writes only status, Events and own Leases: {grant}"
        );
    }
}
