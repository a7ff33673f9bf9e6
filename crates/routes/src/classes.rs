//! Which Ingresses are ours, and their conflict order.

use std::collections::HashSet;

use k8s_openapi::api::networking::v1::Ingress;
use sluice_model::Snapshot;

use crate::{RouteConfig, Served};

/// Legacy class annotation on an Ingress.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Marks the IngressClass used by Ingresses that name no class.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// The Ingresses we serve, oldest `creationTimestamp` first (an Ingress without one after
/// every Ingress with one), then by namespace/name.
pub(crate) fn served_ingresses<'a>(
    snapshot: &'a Snapshot,
    config: &'a RouteConfig,
) -> Vec<Served<'a>> {
    let classes = OurClasses::new(snapshot, config);
    let mut ingresses: Vec<Served<'a>> = snapshot
        .ingresses
        .iter()
        .filter(|(_, ingress)| classes.owns(ingress))
        .collect();
    ingresses.sort_by(|(ka, a), (kb, b)| {
        let (ta, tb) = (
            &a.metadata.creation_timestamp,
            &b.metadata.creation_timestamp,
        );
        (ta.is_none(), ta, ka).cmp(&(tb.is_none(), tb, kb))
    });
    ingresses
}

struct OurClasses<'a> {
    /// IngressClasses with our controller, and the names given by `--ingress-class`.
    names: HashSet<&'a str>,
    /// One of our IngressClasses is the cluster's default class.
    default: bool,
    without_class: bool,
}

impl<'a> OurClasses<'a> {
    fn new(snapshot: &'a Snapshot, config: &'a RouteConfig) -> Self {
        let mut names: HashSet<&str> = config.classes.iter().map(String::as_str).collect();
        let mut default = false;
        for class in snapshot.ingress_classes.values() {
            let controller = class.spec.as_ref().and_then(|s| s.controller.as_deref());
            let Some(name) = class.metadata.name.as_deref() else {
                continue;
            };
            if controller != Some(config.controller.as_str()) {
                continue;
            }
            names.insert(name);
            default |= class
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true");
        }
        Self {
            names,
            default,
            without_class: config.watch_without_class,
        }
    }

    /// `spec.ingressClassName` first, then the legacy annotation, then (no class named) the
    /// default class or `--watch-ingress-without-class`.
    fn owns(&self, ingress: &Ingress) -> bool {
        let spec_class = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref());
        let annotation = ingress
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CLASS_ANNOTATION))
            .map(String::as_str);
        match spec_class.or(annotation) {
            Some(name) => self.names.contains(name),
            None => self.default || self.without_class,
        }
    }
}
