//! A compact EndpointSlice: only what sluice reads, with the field names and types of
//! `k8s_openapi::api::discovery::v1` so readers look the same.
//!
//! EndpointSlices are most of the objects a cluster holds (one endpoint per pod), and
//! k8s-openapi's `Endpoint` is 352 bytes before any string: `targetRef` (seven optional
//! strings), `hostname`, `deprecatedTopology` and two hint lists inline, none of which sluice
//! reads but the hints. Here an endpoint keeps its addresses, conditions, node, zone and boxed
//! hints (rare: only topology-aware Services have them); a port drops `appProtocol`.
//!
//! Decoding is k8s-openapi's, field for field: the same keys (camelCase, unknown ones ignored),
//! `null` read as absent, absent strings and lists as empty, `apiVersion`/`kind` checked when
//! present, only mappings for objects and only strings for keys. So a manifest is accepted or
//! refused exactly as before, with the same error text (`tests` below checks it against
//! k8s-openapi). Both sources decode straight into these types.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::Resource as _;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1 as k8s;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::Name;

/// How k8s-openapi reads a field: as `Option<Wire>` (so `null` is absent), then an absent
/// string or list becomes empty and an absent option stays `None`.
trait Field: Sized {
    type Wire;
    fn finish(wire: Option<Self::Wire>) -> Self;
}

impl<T> Field for Option<T> {
    type Wire = T;
    fn finish(wire: Option<T>) -> Self {
        wire
    }
}

impl Field for String {
    type Wire = String;
    fn finish(wire: Option<String>) -> Self {
        wire.unwrap_or_default()
    }
}

impl<T> Field for Vec<T> {
    type Wire = Vec<T>;
    fn finish(wire: Option<Vec<T>>) -> Self {
        wire.unwrap_or_default()
    }
}

/// A mapping key: only a string, refused otherwise with k8s-openapi's words.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("field identifier")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// A struct read as k8s-openapi reads its own (see the module documentation), serialized
/// with absent options left out. Fields sluice does not keep but k8s-openapi would decode
/// (`checked_then_dropped`) are decoded as k8s-openapi's type and dropped, so a malformed one
/// refuses the object as before.
macro_rules! k8s_struct {
    (
        $(#[$attr:meta])*
        pub struct $name:ident {
            $( $(#[$field_attr:meta])* pub $field:ident: $type:ty = $key:literal, )*
        }
        $( checked_then_dropped { $( $dropped:literal: $dropped_type:ty, )* } )?
    ) => {
        $(#[$attr])*
        #[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
        pub struct $name {
            $(
                $(#[$field_attr])*
                #[serde(rename = $key, skip_serializing_if = "is_absent")]
                pub $field: $type,
            )*
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct StructVisitor;
                impl<'de> Visitor<'de> for StructVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(stringify!($name))
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$name, A::Error> {
                        $( let mut $field: Option<<$type as Field>::Wire> = None; )*
                        while let Some(key) = map.next_key::<Key<'de>>()? {
                            match key.0.as_ref() {
                                $( $key => $field = map.next_value()?, )*
                                $($( $dropped => {
                                    map.next_value::<Option<$dropped_type>>()?;
                                } )*)?
                                _ => {
                                    map.next_value::<IgnoredAny>()?;
                                }
                            }
                        }
                        Ok($name { $( $field: Field::finish($field), )* })
                    }
                }
                deserializer.deserialize_struct(stringify!($name), &[$($key),*], StructVisitor)
            }
        }
    };
}

/// Serialized unless absent: `None` (k8s-openapi leaves those out; it writes empty strings
/// and lists, and so does this).
trait Absent {
    fn absent(&self) -> bool;
}

impl<T> Absent for Option<T> {
    fn absent(&self) -> bool {
        self.is_none()
    }
}

impl Absent for String {
    fn absent(&self) -> bool {
        false
    }
}

impl<T> Absent for Vec<T> {
    fn absent(&self) -> bool {
        false
    }
}

fn is_absent<T: Absent>(value: &T) -> bool {
    value.absent()
}

k8s_struct! {
    /// One endpoint: kube-proxy reads its first address, conditions, node, zone and hints.
    pub struct Endpoint {
        pub addresses: Vec<String> = "addresses",
        pub conditions: Option<EndpointConditions> = "conditions",
        /// Boxed: only Services with topology-aware routing have hints.
        pub hints: Option<Box<EndpointHints>> = "hints",
        /// Interned ([`Name`]): the endpoints on a node share a copy.
        pub node_name: Option<Name> = "nodeName",
        pub zone: Option<Name> = "zone",
    }
    checked_then_dropped {
        "deprecatedTopology": BTreeMap<String, String>,
        "hostname": String,
        "targetRef": ObjectReference,
    }
}

k8s_struct! {
    pub struct EndpointConditions {
        pub ready: Option<bool> = "ready",
        pub serving: Option<bool> = "serving",
        pub terminating: Option<bool> = "terminating",
    }
}

k8s_struct! {
    pub struct EndpointHints {
        pub for_nodes: Option<Vec<ForNode>> = "forNodes",
        pub for_zones: Option<Vec<ForZone>> = "forZones",
    }
}

k8s_struct! {
    pub struct ForNode {
        pub name: String = "name",
    }
}

k8s_struct! {
    pub struct ForZone {
        pub name: String = "name",
    }
}

k8s_struct! {
    /// A port of every endpoint of the slice (`appProtocol` is not read).
    pub struct EndpointPort {
        pub name: Option<String> = "name",
        pub port: Option<i32> = "port",
        pub protocol: Option<String> = "protocol",
    }
    checked_then_dropped {
        "appProtocol": String,
    }
}

/// An EndpointSlice as sluice keeps it (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointSlice {
    pub address_type: String,
    pub endpoints: Option<Vec<Endpoint>>,
    pub metadata: ObjectMeta,
    pub ports: Option<Vec<EndpointPort>>,
}

impl k8s_openapi::Resource for EndpointSlice {
    const API_VERSION: &'static str = <k8s::EndpointSlice as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <k8s::EndpointSlice as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <k8s::EndpointSlice as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <k8s::EndpointSlice as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str =
        <k8s::EndpointSlice as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for EndpointSlice {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<'de> Deserialize<'de> for EndpointSlice {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(
            "EndpointSlice",
            &[
                "apiVersion",
                "kind",
                "addressType",
                "endpoints",
                "metadata",
                "ports",
            ],
            SliceVisitor,
        )
    }
}

struct SliceVisitor;

impl<'de> Visitor<'de> for SliceVisitor {
    type Value = EndpointSlice;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EndpointSlice")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EndpointSlice, A::Error> {
        let mut slice = EndpointSlice::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key.0.as_ref() {
                "apiVersion" => expect(&mut map, EndpointSlice::API_VERSION)?,
                "kind" => expect(&mut map, EndpointSlice::KIND)?,
                "addressType" => slice.address_type = Field::finish(map.next_value()?),
                "endpoints" => slice.endpoints = map.next_value()?,
                "metadata" => slice.metadata = Field::finish(map.next_value()?),
                "ports" => slice.ports = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(slice)
    }
}

impl Field for ObjectMeta {
    type Wire = ObjectMeta;
    fn finish(wire: Option<ObjectMeta>) -> Self {
        wire.unwrap_or_default()
    }
}

/// `apiVersion` or `kind`: must be `expected` when present.
fn expect<'de, A: MapAccess<'de>>(map: &mut A, expected: &'static str) -> Result<(), A::Error> {
    let value: String = map.next_value()?;
    if value == expected {
        Ok(())
    } else {
        Err(de::Error::invalid_value(
            de::Unexpected::Str(&value),
            &expected,
        ))
    }
}

impl Serialize for EndpointSlice {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = 4 + usize::from(self.endpoints.is_some()) + usize::from(self.ports.is_some());
        let mut state = serializer.serialize_struct("EndpointSlice", fields)?;
        state.serialize_field("apiVersion", EndpointSlice::API_VERSION)?;
        state.serialize_field("kind", EndpointSlice::KIND)?;
        state.serialize_field("addressType", &self.address_type)?;
        if let Some(endpoints) = &self.endpoints {
            state.serialize_field("endpoints", endpoints)?;
        }
        state.serialize_field("metadata", &self.metadata)?;
        if let Some(ports) = &self.ports {
            state.serialize_field("ports", ports)?;
        }
        state.end()
    }
}

impl From<k8s::EndpointSlice> for EndpointSlice {
    fn from(slice: k8s::EndpointSlice) -> Self {
        EndpointSlice {
            address_type: slice.address_type,
            endpoints: slice
                .endpoints
                .map(|endpoints| endpoints.into_iter().map(Endpoint::from).collect()),
            metadata: slice.metadata,
            ports: slice
                .ports
                .map(|ports| ports.into_iter().map(EndpointPort::from).collect()),
        }
    }
}

impl From<k8s::Endpoint> for Endpoint {
    fn from(endpoint: k8s::Endpoint) -> Self {
        Endpoint {
            addresses: endpoint.addresses,
            conditions: endpoint.conditions.map(|c| EndpointConditions {
                ready: c.ready,
                serving: c.serving,
                terminating: c.terminating,
            }),
            hints: endpoint.hints.map(|hints| {
                Box::new(EndpointHints {
                    for_nodes: hints.for_nodes.map(|nodes| {
                        nodes
                            .into_iter()
                            .map(|n| ForNode { name: n.name })
                            .collect()
                    }),
                    for_zones: hints.for_zones.map(|zones| {
                        zones
                            .into_iter()
                            .map(|z| ForZone { name: z.name })
                            .collect()
                    }),
                })
            }),
            node_name: endpoint.node_name.map(Name::from),
            zone: endpoint.zone.map(Name::from),
        }
    }
}

impl From<k8s::EndpointPort> for EndpointPort {
    fn from(port: k8s::EndpointPort) -> Self {
        EndpointPort {
            name: port.name,
            port: port.port,
            protocol: port.protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// An EndpointSlice with every field Kubernetes has.
    fn full_manifest() -> Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "ns", "name": "web-abc", "resourceVersion": "7",
                "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 3,
                "labels": {"kubernetes.io/service-name": "web"},
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "x"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web",
                    "uid": "u"}]},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"},
                      {"name": "dns", "port": 53, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.244.1.2", "10.244.1.3"],
                 "conditions": {"ready": true, "serving": true, "terminating": false},
                 "nodeName": "node-a", "zone": "z1",
                 "hints": {"forZones": [{"name": "z1"}], "forNodes": [{"name": "node-a"}]},
                 "hostname": "web-1",
                 "deprecatedTopology": {"topology.kubernetes.io/zone": "z1"},
                 "targetRef": {"kind": "Pod", "namespace": "ns", "name": "web-1", "uid": "u1",
                     "apiVersion": "v1", "resourceVersion": "5", "fieldPath": "spec"}},
                {"addresses": ["10.244.2.2"], "conditions": {"ready": false,
                    "terminating": true}, "nodeName": "node-b",
                 "hints": {"forZones": [{"name": "z2"}]}},
                {"addresses": ["10.244.3.2"]}
            ]
        })
    }

    /// Decodes `value` both ways: into the compact type, and into k8s-openapi's converted.
    fn both(value: Value) -> (Result<EndpointSlice, String>, Result<EndpointSlice, String>) {
        let ours =
            serde_json::from_value::<EndpointSlice>(value.clone()).map_err(|e| e.to_string());
        let theirs = serde_json::from_value::<k8s::EndpointSlice>(value)
            .map(EndpointSlice::from)
            .map_err(|e| e.to_string());
        (ours, theirs)
    }

    #[test]
    fn a_full_slice_keeps_every_field_the_agent_reads_as_k8s_openapi_decodes_it() {
        let (ours, theirs) = both(full_manifest());
        let ours = ours.unwrap();
        assert_eq!(ours, theirs.unwrap());
        // Not vacuous: the fields sluice reads are all there.
        assert_eq!(ours.address_type, "IPv4");
        assert_eq!(ours.metadata.resource_version.as_deref(), Some("7"));
        let ports = ours.ports.as_ref().unwrap();
        assert_eq!(
            (ports[1].name.as_deref(), ports[1].port),
            (Some("dns"), Some(53))
        );
        assert_eq!(ports[1].protocol.as_deref(), Some("UDP"));
        let endpoints = ours.endpoints.as_ref().unwrap();
        assert_eq!(endpoints.len(), 3);
        let first = &endpoints[0];
        assert_eq!(first.addresses, ["10.244.1.2", "10.244.1.3"]);
        assert_eq!(
            first.conditions,
            Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false)
            })
        );
        assert_eq!(
            (first.node_name.as_deref(), first.zone.as_deref()),
            (Some("node-a"), Some("z1"))
        );
        let hints = first.hints.as_ref().unwrap();
        assert_eq!(hints.for_zones, Some(vec![ForZone { name: "z1".into() }]));
        assert_eq!(
            hints.for_nodes,
            Some(vec![ForNode {
                name: "node-a".into()
            }])
        );
        assert_eq!(endpoints[1].conditions.as_ref().unwrap().serving, None);
        assert_eq!(endpoints[2].hints, None);
    }

    #[test]
    fn odd_and_malformed_slices_are_accepted_or_refused_as_k8s_openapi_does() {
        let with = |pointer: &str, value: Value| {
            let mut manifest = full_manifest();
            *manifest.pointer_mut(pointer).unwrap() = value;
            manifest
        };
        let cases = [
            json!({}),
            json!({"metadata": null, "addressType": null, "endpoints": null, "ports": null}),
            json!({"endpoints": [{}, {"addresses": null, "hints": {}, "conditions": {}}],
                   "ports": [{}], "unknown": {"deep": [1, 2]}}),
            json!({"endpoints": [{"hints": {"forZones": [{}], "forNodes": null}}]}),
            with("/apiVersion", json!("discovery.k8s.io/v1beta1")),
            with("/kind", json!("Endpoints")),
            with("/addressType", json!(4)),
            with("/ports/0", json!(["http", 80, "TCP"])),
            with("/ports/0/appProtocol", json!(7)),
            with("/ports/0/port", json!("80")),
            with("/endpoints/0", json!("10.0.0.1")),
            with("/endpoints/0/addresses", json!("10.0.0.1")),
            with("/endpoints/0/conditions", json!([true, true, false])),
            with("/endpoints/0/conditions/ready", json!("yes")),
            with("/endpoints/0/targetRef", json!(5)),
            with("/endpoints/0/targetRef/uid", json!(5)),
            with("/endpoints/0/hostname", json!(["web-1"])),
            with("/endpoints/0/deprecatedTopology", json!({"zone": 1})),
            with("/endpoints/0/hints/forZones", json!({"name": "z1"})),
            with("/endpoints/0/hints/forNodes/0/name", json!(null)),
            with("/metadata/labels", json!(["x"])),
            json!([]),
            json!("EndpointSlice"),
        ];
        let mut refused = 0;
        for case in cases {
            let (ours, theirs) = both(case.clone());
            assert_eq!(ours, theirs, "{case}");
            refused += usize::from(ours.is_err());
        }
        assert_eq!(refused, 18, "the malformed cases are refused");
    }

    #[test]
    fn serialized_it_reads_back_in_k8s_openapi_as_the_same_slice() {
        let slice: EndpointSlice = serde_json::from_value(full_manifest()).unwrap();
        let text = serde_json::to_string(&slice).unwrap();
        let theirs: k8s::EndpointSlice = serde_json::from_str(&text).unwrap();
        assert_eq!(EndpointSlice::from(theirs), slice);
    }

    #[test]
    fn an_endpoint_stays_small() {
        // The budget: one of these per pod behind a Service (1,000,000 at 100k Services × 10).
        // k8s-openapi's is 352 bytes; addresses 24, node and zone (shared names) 16 each,
        // boxed hints 8, conditions 3. Growing this is a memory regression at scale.
        assert!(size_of::<Endpoint>() <= 72, "{}", size_of::<Endpoint>());
        assert!(
            size_of::<EndpointPort>() <= 56,
            "{}",
            size_of::<EndpointPort>()
        );
    }
}
