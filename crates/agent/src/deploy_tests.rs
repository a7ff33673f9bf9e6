//! The shipped manifests (manifests/*.yaml) agree with the binary: flags and variables it
//! reads, the paths it uses, the probes it answers.

use clap::Parser as _;
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
