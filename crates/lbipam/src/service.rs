//! The allocator's view of a Service, and the annotations that request addresses or sharing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_model::{ObjectKey, Protocol};

use crate::addr::IpFamily;

/// Annotations requesting specific addresses (comma-separated), in precedence order.
pub const REQUESTED_IPS_ANNOTATIONS: [&str; 3] = [
    "sluice.dev/load-balancer-ips",
    "metallb.universe.tf/loadBalancerIPs",
    "lbipam.cilium.io/ips",
];

/// Annotations naming a sharing key, in precedence order.
pub const SHARING_KEY_ANNOTATIONS: [&str; 3] = [
    "sluice.dev/sharing-key",
    "metallb.universe.tf/allow-shared-ip",
    "lbipam.cilium.io/sharing-key",
];

/// `spec.ipFamilyPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpFamilyPolicy {
    #[default]
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

impl IpFamilyPolicy {
    /// Parses the Kubernetes spelling; absent or unknown means `SingleStack` (the API
    /// server's default).
    pub fn from_k8s(value: Option<&str>) -> Self {
        match value {
            Some("PreferDualStack") => IpFamilyPolicy::PreferDualStack,
            Some("RequireDualStack") => IpFamilyPolicy::RequireDualStack,
            _ => IpFamilyPolicy::SingleStack,
        }
    }
}

/// What the allocator needs to know about one Service (any type: non-LoadBalancer Services
/// matter when they still carry addresses in their status, or when their type changed).
#[derive(Debug, Clone, PartialEq)]
pub struct LbService {
    pub key: ObjectKey,
    pub uid: String,
    /// `metadata.creationTimestamp`: on a conflict the older Service keeps the address;
    /// Services without one count as newest.
    pub created: Option<Time>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `spec.type == LoadBalancer`.
    pub is_load_balancer: bool,
    /// `spec.loadBalancerClass`.
    pub load_balancer_class: Option<String>,
    /// `spec.ipFamilies`, in order (unknown entries dropped).
    pub ip_families: Vec<IpFamily>,
    pub ip_family_policy: IpFamilyPolicy,
    /// (protocol, port) of every `spec.ports` entry.
    pub ports: Vec<(Protocol, u16)>,
    /// `spec.loadBalancerIP` (deprecated single-address request).
    pub load_balancer_ip: Option<String>,
    /// `spec.externalTrafficPolicy == Local`.
    pub external_traffic_local: bool,
    /// `spec.selector` (pod selector), compared when eTP=Local Services share an address.
    pub selector: BTreeMap<String, String>,
    /// The IPs in `status.loadBalancer.ingress[].ip`, in order (unparsable entries dropped).
    pub ingress_ips: Vec<IpAddr>,
}

impl LbService {
    /// A `type: LoadBalancer` Service without class, ports, families or status (builders,
    /// tests); set the fields you need.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            key: ObjectKey::new(namespace, name),
            uid: String::new(),
            created: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            is_load_balancer: true,
            load_balancer_class: None,
            ip_families: Vec::new(),
            ip_family_policy: IpFamilyPolicy::SingleStack,
            ports: Vec::new(),
            load_balancer_ip: None,
            external_traffic_local: false,
            selector: BTreeMap::new(),
            ingress_ips: Vec::new(),
        }
    }

    /// Whether the allocator needs to see this Service: of type LoadBalancer, or holding
    /// addresses in `status.loadBalancer` (to be released when the type changed). Cheap:
    /// every other Service (most of a cluster) is skipped before conversion.
    pub fn concerns(service: &Service) -> bool {
        let has_addresses = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .is_some_and(|ingress| !ingress.is_empty());
        Self::is_load_balancer(service) || has_addresses
    }

    /// `spec.type: LoadBalancer`.
    pub fn is_load_balancer(service: &Service) -> bool {
        service
            .spec
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            .is_some_and(|t| t == "LoadBalancer")
    }

    /// The allocator's view of a Kubernetes Service; `None` when it has no name.
    pub fn from_service(service: &Service) -> Option<Self> {
        let meta = &service.metadata;
        let key = ObjectKey::of(meta)?;
        let spec = service.spec.clone().unwrap_or_default();
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let protocol = Protocol::from_k8s(p.protocol.as_deref())?;
                Some((protocol, u16::try_from(p.port).ok()?))
            })
            .collect();
        let ingress_ips = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|ingress| ingress.ip.as_deref()?.parse().ok())
            .collect();
        Some(Self {
            key,
            uid: meta.uid.clone().unwrap_or_default(),
            created: meta.creation_timestamp.clone(),
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            is_load_balancer: spec.type_.as_deref() == Some("LoadBalancer"),
            load_balancer_class: spec.load_balancer_class,
            ip_families: spec
                .ip_families
                .iter()
                .flatten()
                .filter_map(|f| IpFamily::from_k8s(f))
                .collect(),
            ip_family_policy: IpFamilyPolicy::from_k8s(spec.ip_family_policy.as_deref()),
            ports,
            load_balancer_ip: spec.load_balancer_ip.filter(|ip| !ip.is_empty()),
            external_traffic_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            selector: spec.selector.unwrap_or_default(),
            ingress_ips,
        })
    }
}

/// Why a Service's address request cannot be honoured as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{source_name}: {value:?} is not an IP address")]
    NotAnAddress { source_name: String, value: String },
    #[error("{source_name}: more than one {family} address ({first} and {second})")]
    TwoOfOneFamily {
        source_name: String,
        family: IpFamily,
        first: IpAddr,
        second: IpAddr,
    },
    #[error(
        "{source_name}: {ip} is an {family} address but the Service's ipFamilies are {families}"
    )]
    FamilyNotRequested {
        source_name: String,
        ip: IpAddr,
        family: IpFamily,
        families: String,
    },
    #[error("{source_name}: ipFamilyPolicy RequireDualStack needs one IPv4 and one IPv6 address")]
    NotDualStack { source_name: String },
}

/// A Service's explicit address request: where it came from and one address per family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// `annotation <name>` or `spec.loadBalancerIP`.
    pub source_name: String,
    pub ips: Vec<IpAddr>,
}

/// The first request source present (annotations in [`REQUESTED_IPS_ANNOTATIONS`] order,
/// then `spec.loadBalancerIP`), parsed. `Ok(None)` when the Service requests nothing.
pub(crate) fn requested_ips(service: &LbService) -> Result<Option<Request>, RequestError> {
    let from_annotation = REQUESTED_IPS_ANNOTATIONS.iter().find_map(|name| {
        let value = service.annotations.get(*name)?;
        Some((format!("annotation {name}"), value.as_str()))
    });
    let Some((source_name, value)) = from_annotation.or_else(|| {
        let ip = service.load_balancer_ip.as_deref()?;
        Some(("spec.loadBalancerIP".to_string(), ip))
    }) else {
        return Ok(None);
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let ip: IpAddr = entry.parse().map_err(|_| RequestError::NotAnAddress {
            source_name: source_name.clone(),
            value: entry.to_string(),
        })?;
        if let Some(first) = ips.iter().find(|i| IpFamily::of(**i) == IpFamily::of(ip)) {
            return Err(RequestError::TwoOfOneFamily {
                source_name,
                family: IpFamily::of(ip),
                first: *first,
                second: ip,
            });
        }
        ips.push(ip);
    }
    if ips.is_empty() {
        return Err(RequestError::NotAnAddress {
            source_name,
            value: value.to_string(),
        });
    }
    Ok(Some(Request { source_name, ips }))
}

/// The sharing key: the first of [`SHARING_KEY_ANNOTATIONS`] present with a non-empty value.
pub(crate) fn sharing_key(service: &LbService) -> Option<&str> {
    SHARING_KEY_ANNOTATIONS.iter().find_map(|name| {
        let value = service.annotations.get(*name)?.trim();
        (!value.is_empty()).then_some(value)
    })
}

/// The families the Service gets addresses for, in `spec.ipFamilies` order. Without
/// `ipFamilies` (hand-written manifests) the requested addresses decide, else IPv4 (and IPv6
/// for the dual-stack policies).
pub(crate) fn wanted_families(service: &LbService, request: Option<&Request>) -> Vec<IpFamily> {
    let mut families: Vec<IpFamily> = Vec::new();
    for family in &service.ip_families {
        if !families.contains(family) {
            families.push(*family);
        }
    }
    if families.is_empty() {
        families = match request {
            Some(r) => r.ips.iter().map(|ip| IpFamily::of(*ip)).collect(),
            None => vec![IpFamily::V4, IpFamily::V6],
        };
    }
    if service.ip_family_policy == IpFamilyPolicy::SingleStack {
        families.truncate(1);
    }
    families
}

/// Checks the request against the Service's families and policy.
pub(crate) fn check_request(
    request: &Request,
    families: &[IpFamily],
    policy: IpFamilyPolicy,
) -> Result<(), RequestError> {
    for ip in &request.ips {
        if !families.contains(&IpFamily::of(*ip)) {
            let names: Vec<String> = families.iter().map(ToString::to_string).collect();
            return Err(RequestError::FamilyNotRequested {
                source_name: request.source_name.clone(),
                ip: *ip,
                family: IpFamily::of(*ip),
                families: format!("[{}]", names.join(", ")),
            });
        }
    }
    if policy == IpFamilyPolicy::RequireDualStack && request.ips.len() < 2 {
        return Err(RequestError::NotDualStack {
            source_name: request.source_name.clone(),
        });
    }
    Ok(())
}
