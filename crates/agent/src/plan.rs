//! `sluice plan`: the decided plan for a directory of manifests and exactly what each
//! dataplane would program, offline (no root, no kernel). The golden cases in
//! `tests/golden/` are this command's output.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use sluice_compute::compute;
use sluice_model::ObjectKey;

use crate::cli::{OutputFormat, PlanArgs, PlanMode};

/// Everything `sluice plan` prints, by section.
pub struct PlanOutput {
    pub sections: Vec<(&'static str, String)>,
    pub plan_json: serde_json::Value,
    pub warnings: Vec<String>,
}

/// Loads the directory and plans it. Errors only when the directory cannot be read.
pub fn plan(args: &PlanArgs) -> anyhow::Result<PlanOutput> {
    let Some(dir) = args.source.strip_prefix("dir:").filter(|d| !d.is_empty()) else {
        bail!("--source must be dir:PATH (got {:?})", args.source);
    };
    let mut config = args.compute.to_config().context("invalid flags")?;
    let ingress_config = sluice_ingress::IngressConfig::default();
    if args.ingress {
        // As the agent: a NodePort on an Ingress listener's port (80, 443) is refused.
        config.reserved_node_ports = [ingress_config.http_bind, ingress_config.https_bind]
            .iter()
            .flatten()
            .map(|a| a.port())
            .collect();
    }
    let (snapshot, load_warnings) = sluice_source_file::load_dir(&PathBuf::from(dir))
        .with_context(|| format!("reading {dir}"))?;
    let mut warnings: Vec<String> = load_warnings.iter().map(ToString::to_string).collect();
    let node_object = snapshot
        .nodes
        .get(&ObjectKey::cluster(args.hostname_override.clone()));
    let (node, node_warnings) = sluice_compute::node_info_checked(
        &args.hostname_override,
        node_object.map(|n| n.as_ref()),
        &args.node_address,
    );
    warnings.extend(node_warnings.iter().map(ToString::to_string));
    let computed = compute(&snapshot, &node, &config);
    warnings.extend(computed.warnings.iter().map(ToString::to_string));

    let plan = computed.plan;
    let mut sections = vec![("plan", plan.to_string())];
    if matches!(args.proxy_mode, PlanMode::Nftables | PlanMode::Both) {
        sections.push((
            "nftables",
            sluice_dp_nft::NftDataplane::<sluice_dp_nft::NftCommand>::render_plan(&plan),
        ));
    }
    if matches!(args.proxy_mode, PlanMode::Ebpf | PlanMode::Both) {
        sections.push(("ebpf", sluice_dp_ebpf::EbpfDataplane::render_plan(&plan)));
    }
    if args.ingress {
        let routes_config = args.ingress_classes.to_config().context("invalid flags")?;
        let now = std::time::SystemTime::now();
        let (routes, route_warnings) = sluice_routes::plan(&snapshot, &node, &routes_config, now);
        warnings.extend(route_warnings.iter().map(ToString::to_string));
        sections.push(("ingress", routes.to_string()));
    }
    let plan_json = serde_json::to_value(&plan).context("encoding the plan")?;
    warnings.sort();
    warnings.dedup();
    Ok(PlanOutput {
        sections,
        plan_json,
        warnings,
    })
}

/// Prints the output; fails (exit status 1) when objects were skipped, naming each.
pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    let out = plan(args)?;
    match args.output {
        OutputFormat::Text => print!("{}", text(&out)),
        OutputFormat::Json => {
            let mut json = serde_json::json!({ "plan": out.plan_json, "warnings": out.warnings });
            for (name, body) in &out.sections {
                if *name != "plan" {
                    json[name] = serde_json::Value::String(body.clone());
                }
            }
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
    }
    if !out.warnings.is_empty() {
        for warning in &out.warnings {
            eprintln!("warning: {warning}");
        }
        bail!(
            "{} problem(s) in the input; the rest is planned",
            out.warnings.len()
        );
    }
    Ok(())
}

/// The sections as text, each under a `==> name <==` header.
pub fn text(out: &PlanOutput) -> String {
    let mut text = String::new();
    for (name, body) in &out.sections {
        let _ = writeln!(text, "==> {name} <==");
        text.push_str(body);
        if !body.ends_with('\n') && !body.is_empty() {
            text.push('\n');
        }
    }
    let _ = writeln!(text, "==> warnings <==");
    for warning in &out.warnings {
        let _ = writeln!(text, "{warning}");
    }
    text
}
