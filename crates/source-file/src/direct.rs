//! Direct decoding: the common document (one object of ours whose `apiVersion` and `kind` come
//! before its other fields) deserialized straight from the YAML parser's events into its typed
//! struct, without building a `serde_yaml::Value` first and decoding that: about half the time
//! and a fraction of the allocations.
//!
//! It must never accept what the general path ([`crate::value`], then `serde_yaml::from_value`)
//! refuses, nor decode anything differently. So every node goes through [`Strict`], which hands
//! a YAML node to a Rust type only where `serde_yaml::Value`'s own deserializer would (a
//! string only from a string scalar, a number only from a number, ...), refuses duplicate keys
//! and `<<` merge keys, and charges every node to a budget like the general path's. Whatever it
//! does not take (a tag, a List, a kind that is not ours, an error of any kind) is decoded the
//! general way, which also words the warning: direct decoding never reports anything itself.

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde::de::value::{MapAccessDeserializer, StrDeserializer};
use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer, MapAccess,
    SeqAccess, Visitor,
};
use sluice_model::EndpointSlice;
use sluice_model::SnapshotKind;

use crate::kinds;
use crate::value::ALLOWANCE;

/// An object of ours, decoded.
#[derive(Debug, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per document and moved into an Arc right away"
)]
pub(crate) enum Typed {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Node(Node),
    Ingress(Ingress),
    IngressClass(IngressClass),
    Secret(Secret),
}

/// Decodes `document` if it is one object of ours that decodes without any doubt; `None`
/// sends it the general way.
pub(crate) fn decode(document: &str, max_nodes: usize) -> Option<Typed> {
    let budget = Budget(Cell::new(
        document.len().saturating_add(ALLOWANCE).min(max_nodes),
    ));
    let deserializer = serde_yaml::Deserializer::from_str(document);
    Strict {
        de: deserializer,
        budget: &budget,
    }
    .deserialize_map(Dispatch)
    .ok()
}

/// Why direct decoding gave up; never shown (the general path words the warning).
const GIVE_UP: &str = "not for direct decoding";

fn give_up<E: de::Error>() -> E {
    E::custom(GIVE_UP)
}

/// Nodes left, as in [`crate::value`]: aliases cannot make a small document large.
struct Budget(Cell<usize>);

impl Budget {
    fn take<E: de::Error>(&self) -> Result<(), E> {
        match self.0.get() {
            0 => Err(give_up()),
            n => {
                self.0.set(n - 1);
                Ok(())
            }
        }
    }
}

/// The document's top-level mapping: reads `apiVersion` and `kind`, then hands the rest of the
/// mapping to the kind's own deserializer.
struct Dispatch;

impl<'de> Visitor<'de> for Dispatch {
    type Value = Typed;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Typed, A::Error> {
        let (mut kind, mut api_version) = (None, None);
        let first_other = loop {
            let Some(key) = map.next_key::<String>()? else {
                return Err(give_up()); // nothing but `kind` and `apiVersion`
            };
            match key.as_str() {
                "kind" => kind = Some(map.next_value::<String>()?),
                "apiVersion" => api_version = Some(map.next_value::<String>()?),
                _ => break key,
            }
        };
        let ours = kind
            .as_deref()
            .and_then(kinds::ours)
            .filter(|&k| api_version.as_deref() == Some(kinds::api_version(k)))
            .ok_or_else(give_up)?;
        let rest = MapAccessDeserializer::new(Replay {
            first: Some(first_other),
            map,
        });
        Ok(match ours {
            SnapshotKind::Service => Typed::Service(Service::deserialize(rest)?),
            SnapshotKind::EndpointSlice => Typed::EndpointSlice(EndpointSlice::deserialize(rest)?),
            SnapshotKind::Node => Typed::Node(Node::deserialize(rest)?),
            SnapshotKind::Ingress => Typed::Ingress(Ingress::deserialize(rest)?),
            SnapshotKind::IngressClass => Typed::IngressClass(IngressClass::deserialize(rest)?),
            SnapshotKind::Secret => Typed::Secret(Secret::deserialize(rest)?),
        })
    }
}

/// The rest of a mapping, starting with a key already read.
struct Replay<A> {
    first: Option<String>,
    map: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Replay<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        match self.first.take() {
            Some(key) => {
                let key: StrDeserializer<'_, A::Error> = key.as_str().into_deserializer();
                seed.deserialize(key).map(Some)
            }
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// What a Rust type asked for, and so which YAML nodes `serde_yaml::Value` would give it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Whatever the node is (`deserialize_any`).
    Any,
    Bool,
    Number,
    Str,
    Unit,
    Seq,
    Map,
    /// `deserialize_option`: null or something.
    Option,
    /// `deserialize_newtype_struct`: the node itself.
    Newtype,
}

/// A deserializer that gives each Rust type only the YAML nodes `serde_yaml::Value`'s
/// deserializer would give it, with the same result.
struct Strict<'b, D> {
    de: D,
    budget: &'b Budget,
}

impl<'b, D> Strict<'b, D> {
    fn only<V>(&self, visitor: V, expect: Expect) -> Only<'b, V> {
        Only {
            visitor,
            expect,
            budget: self.budget,
        }
    }
}

macro_rules! strict_as {
    ($expect:ident: $($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
                let only = self.only(visitor, Expect::$expect);
                self.de.deserialize_any(only)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<'_, D> {
    type Error = D::Error;

    strict_as!(Any: deserialize_any);
    strict_as!(Bool: deserialize_bool);
    strict_as!(Number: deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64);
    strict_as!(Str: deserialize_char deserialize_str deserialize_string deserialize_identifier);
    strict_as!(Unit: deserialize_unit);
    strict_as!(Seq: deserialize_seq);
    strict_as!(Map: deserialize_map);

    fn deserialize_bytes<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, D::Error> {
        Err(give_up())
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, D::Error> {
        Err(give_up())
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let only = self.only(visitor, Expect::Option);
        self.de.deserialize_option(only)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let only = self.only(visitor, Expect::Newtype);
        self.de.deserialize_newtype_struct(name, only)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.deserialize_map(visitor)
    }

    /// Enums come from YAML tags: left to the general path.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, D::Error> {
        Err(give_up())
    }

    /// An ignored field is still checked like every other node (the general path built it).
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let budget = self.budget;
        Strict {
            de: self.de,
            budget,
        }
        .deserialize_any(IgnoredAny)?;
        visitor.visit_unit()
    }
}

/// A visitor passing on only the nodes `expect` allows.
struct Only<'b, V> {
    visitor: V,
    expect: Expect,
    budget: &'b Budget,
}

impl<V> Only<'_, V> {
    fn allow<E: de::Error>(&self, allowed: &[Expect]) -> Result<(), E> {
        if self.expect == Expect::Any || allowed.contains(&self.expect) {
            self.budget.take()
        } else {
            Err(give_up())
        }
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Only<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.visitor.expecting(f)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<V::Value, E> {
        self.allow(&[Expect::Bool])?;
        self.visitor.visit_bool(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<V::Value, E> {
        self.allow(&[Expect::Number])?;
        self.visitor.visit_i64(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<V::Value, E> {
        self.allow(&[Expect::Number])?;
        self.visitor.visit_u64(v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<V::Value, E> {
        self.allow(&[Expect::Number])?;
        self.visitor.visit_f64(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        self.allow(&[Expect::Str])?;
        self.visitor.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        self.allow(&[Expect::Str])?;
        self.visitor.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
        self.allow(&[Expect::Str])?;
        self.visitor.visit_string(v)
    }

    /// A null node: `Value::Null`, which types that are not optional see as a unit.
    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.allow(&[Expect::Unit])?;
        self.visitor.visit_unit()
    }

    /// serde_yaml's "no node at all" (`key:` at the end of a flow mapping): `Value::Null`.
    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        match self.expect {
            Expect::Option => {
                self.budget.take()?;
                self.visitor.visit_none()
            }
            _ => self.visit_unit(),
        }
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        if self.expect != Expect::Option {
            return Err(give_up());
        }
        let budget = self.budget;
        self.visitor.visit_some(Strict { de, budget })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        if self.expect != Expect::Newtype {
            return Err(give_up());
        }
        let budget = self.budget;
        self.visitor.visit_newtype_struct(Strict { de, budget })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.allow(&[Expect::Seq])?;
        let budget = self.budget;
        self.visitor.visit_seq(StrictSeq { seq, budget })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.allow(&[Expect::Map])?;
        let budget = self.budget;
        self.visitor.visit_map(StrictMap {
            map,
            budget,
            keys: Keys::default(),
        })
    }
}

struct StrictSeed<'b, S> {
    seed: S,
    budget: &'b Budget,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for StrictSeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        let budget = self.budget;
        self.seed.deserialize(Strict { de, budget })
    }
}

struct StrictSeq<'b, A> {
    seq: A,
    budget: &'b Budget,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for StrictSeq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let budget = self.budget;
        self.seq.next_element_seed(StrictSeed { seed, budget })
    }

    fn size_hint(&self) -> Option<usize> {
        self.seq.size_hint()
    }
}

struct StrictMap<'b, A> {
    map: A,
    budget: &'b Budget,
    keys: Keys,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for StrictMap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let key = KeySeed {
            seed,
            keys: &mut self.keys,
            budget: self.budget,
        };
        self.map.next_key_seed(key)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        let budget = self.budget;
        self.map.next_value_seed(StrictSeed { seed, budget })
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

/// The keys of one mapping so far, hashed: a repeated key is refused (the general path
/// reports it). Two different keys with the same hash are refused too, which only costs the
/// general path's time.
#[derive(Default)]
struct Keys {
    few: Vec<u64>,
    many: Option<HashSet<u64, BuildHasherDefault<PassThrough>>>,
}

/// Linear search is quicker for the few keys of a Kubernetes object's mappings; a hash set
/// keeps a mapping of 100,000 labels linear.
const FEW_KEYS: usize = 16;

impl Keys {
    /// False when the key was there already.
    fn insert(&mut self, key: &str) -> bool {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        if let Some(many) = &mut self.many {
            return many.insert(hash);
        }
        if self.few.contains(&hash) {
            return false;
        }
        self.few.push(hash);
        if self.few.len() > FEW_KEYS {
            self.many = Some(self.few.drain(..).collect());
        }
        true
    }
}

/// The keys are hashes already.
#[derive(Default)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A mapping key: a string (as for `Value`'s deserializer, which gives a struct field or a
/// `String` key only from a string), not seen before in this mapping, not a merge key.
struct KeySeed<'k, 'b, K> {
    seed: K,
    keys: &'k mut Keys,
    budget: &'b Budget,
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<'_, '_, K> {
    type Value = K::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<K::Value, D::Error> {
        self.seed.deserialize(KeyDeserializer {
            de,
            keys: self.keys,
            budget: self.budget,
        })
    }
}

struct KeyDeserializer<'k, 'b, D> {
    de: D,
    keys: &'k mut Keys,
    budget: &'b Budget,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for KeyDeserializer<'_, '_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.de.deserialize_any(KeyVisitor {
            visitor,
            keys: self.keys,
            budget: self.budget,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

struct KeyVisitor<'k, 'b, V> {
    visitor: V,
    keys: &'k mut Keys,
    budget: &'b Budget,
}

impl<V> KeyVisitor<'_, '_, V> {
    fn check<E: de::Error>(&mut self, key: &str) -> Result<(), E> {
        self.budget.take()?;
        if key == "<<" || !self.keys.insert(key) {
            return Err(give_up());
        }
        Ok(())
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for KeyVisitor<'_, '_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.visitor.expecting(f)
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<V::Value, E> {
        self.check(v)?;
        self.visitor.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(mut self, v: &'de str) -> Result<V::Value, E> {
        self.check(v)?;
        self.visitor.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(mut self, v: String) -> Result<V::Value, E> {
        self.check(&v)?;
        self.visitor.visit_string(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents;

    /// What the general path makes of a document, when it is one object of ours that decodes.
    fn general(document: &str) -> Option<Typed> {
        let mut value = crate::value::parse(document, usize::MAX).ok()?;
        value.apply_merge().ok()?;
        let kind = kinds::ours(value.get("kind")?.as_str()?)?;
        if value.get("apiVersion")?.as_str()? != kinds::api_version(kind) {
            return None;
        }
        let v = value;
        Some(match kind {
            SnapshotKind::Service => Typed::Service(serde_yaml::from_value(v).ok()?),
            SnapshotKind::EndpointSlice => Typed::EndpointSlice(serde_yaml::from_value(v).ok()?),
            SnapshotKind::Node => Typed::Node(serde_yaml::from_value(v).ok()?),
            SnapshotKind::Ingress => Typed::Ingress(serde_yaml::from_value(v).ok()?),
            SnapshotKind::IngressClass => Typed::IngressClass(serde_yaml::from_value(v).ok()?),
            SnapshotKind::Secret => Typed::Secret(serde_yaml::from_value(v).ok()?),
        })
    }

    /// Direct decoding either gives up or agrees with the general path.
    fn check(document: &str) -> bool {
        let Some(direct) = decode(document, usize::MAX) else {
            return false;
        };
        assert_eq!(Some(&direct), general(document).as_ref(), "{document}");
        true
    }

    const SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: web, tier: "1"}
  annotations:
    service.kubernetes.io/topology-mode: Auto
  creationTimestamp: "2026-01-01T00:00:00Z"
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ipFamilies: [IPv4]
  externalIPs: ['192.0.2.7']
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  externalTrafficPolicy: Local
  healthCheckNodePort: 30123
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30080}
  - name: metrics
    port: 9090
    targetPort: metrics
status:
  loadBalancer:
    ingress: [{ip: 192.0.2.1}]
"#;

    const SLICE: &str = r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP, appProtocol: http}]
endpoints:
- addresses: [10.244.1.2]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-a
  zone: z1
  hints: {forZones: [{name: z1}], forNodes: [{name: node-a}]}
  hostname: web-1
  deprecatedTopology: {topology.kubernetes.io/zone: z1}
  targetRef: {kind: Pod, namespace: shop, name: web-1, uid: u1}
- {addresses: [10.244.1.3], conditions: {ready: false}, nodeName: node-b}
"#;

    const NODE: &str = r#"apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {topology.kubernetes.io/zone: z1}}
spec:
  podCIDR: 10.244.1.0/24
  taints: [{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}]
status:
  addresses: [{type: InternalIP, address: 192.0.2.11}]
  conditions: [{type: Ready, status: "True"}]
  capacity: {cpu: 4, memory: 8Gi}
"#;

    const INGRESS: &str = r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: cafe, namespace: shop, annotations: {nginx.ingress.kubernetes.io/ssl-redirect: "false"}}
spec:
  ingressClassName: sluice
  tls: [{hosts: [cafe.example.com], secretName: cafe-tls}]
  rules:
  - host: cafe.example.com
    http:
      paths:
      - {path: /tea, pathType: Prefix, backend: {service: {name: tea, port: {number: 80}}}}
      - path: /coffee
        pathType: Exact
        backend: {service: {name: coffee, port: {name: http}}}
"#;

    const OTHERS: &str = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: sluice}\nspec: {controller: sluice.dev/ingress}\n---\n\
        apiVersion: v1\nkind: Secret\nmetadata: {name: tls}\ntype: kubernetes.io/tls\ndata: {tls.crt: Y2VydA==, tls.key: a2V5}\nstringData: {extra: text}\n";

    fn documents() -> Vec<String> {
        let mut docs: Vec<String> = [SERVICE, SLICE, NODE, INGRESS]
            .iter()
            .map(|d| d.to_string())
            .collect();
        docs.extend(documents::split(OTHERS).iter().map(|d| d.text.to_owned()));
        docs
    }

    #[test]
    fn ordinary_objects_of_every_kind_decode_directly_and_as_the_general_path_does() {
        for doc in documents() {
            assert!(check(&doc), "not decoded directly:\n{doc}");
        }
    }

    /// The EndpointSlice sluice keeps is what k8s-openapi decodes, less what nobody reads;
    /// a malformed field that is not kept still refuses the slice on both paths.
    #[test]
    fn slices_decode_as_k8s_openapi_decodes_them() {
        type Full = k8s_openapi::api::discovery::v1::EndpointSlice;
        let full: Full = serde_yaml::from_str(SLICE).unwrap();
        let Some(Typed::EndpointSlice(direct)) = decode(SLICE, usize::MAX) else {
            panic!("not decoded directly:\n{SLICE}");
        };
        assert_eq!(direct, EndpointSlice::from(full));
        for (field, malformed) in [
            (
                "targetRef: {kind: Pod, namespace: shop, name: web-1, uid: u1}",
                "targetRef: 5",
            ),
            ("hostname: web-1", "hostname: [web-1]"),
            ("appProtocol: http", "appProtocol: {}"),
        ] {
            let doc = SLICE.replace(field, malformed);
            assert!(serde_yaml::from_str::<Full>(&doc).is_err(), "{doc}");
            assert!(
                decode(&doc, usize::MAX).is_none(),
                "decoded directly:\n{doc}"
            );
            assert!(general(&doc).is_none(), "decoded the general way:\n{doc}");
        }
    }

    #[test]
    fn anything_unusual_goes_the_general_way() {
        let service = |rest: &str| format!("apiVersion: v1\nkind: Service\n{rest}");
        for doc in [
            // Duplicate keys, at the top and deeper down.
            service("metadata: {name: a}\nspec: {}\nspec: {}\n"),
            service("metadata: {name: a, name: b}\n"),
            service("metadata: {name: a, labels: {x: '1', x: '2'}}\n"),
            "kind: Service\napiVersion: v1\nkind: Service\nmetadata: {name: a}\n".to_owned(),
            // A number, a boolean or null where a string belongs (quoted, they are strings).
            service("metadata: {name: 80}\n"),
            service("metadata: {name: a, labels: {enabled: true}}\n"),
            service("metadata: {name: a, labels: {x: null}}\n"),
            // A string where a number belongs.
            service("metadata: {name: a}\nspec: {ports: [{port: '80'}]}\n"),
            // Merge keys, aliases and tags.
            service("x: &m {name: a}\nmetadata: {<<: *m}\n"),
            service("metadata: !custom {name: a}\n"),
            // Null for a list inside a list.
            service("metadata: {name: a}\nspec: {ports: [{port: 80}, null]}\n"),
            // Not one object of ours with apiVersion and kind first.
            "metadata: {name: a}\napiVersion: v1\nkind: Service\n".to_owned(),
            "apiVersion: v1\nkind: List\nitems: []\n".to_owned(),
            "apiVersion: apps/v1\nkind: Service\nmetadata: {name: a}\n".to_owned(),
            "apiVersion: v1\nkind: Deployment\nmetadata: {name: a}\n".to_owned(),
            "apiVersion: v1\nkind: Service\n".to_owned(),
            "- a\n".to_owned(),
            String::new(),
        ] {
            assert!(
                decode(&doc, usize::MAX).is_none(),
                "decoded directly:\n{doc}"
            );
        }
        // Quoted, they are strings; null is no name, as for the general path.
        assert!(check(&service(
            "metadata: {name: '80', labels: {enabled: 'true'}}\n"
        )));
        assert!(check(&service("metadata: {name: null}\nspec: {}\n")));
        // Null fields are absent ones, whether optional or not (k8s-openapi defaults them).
        let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a}\n";
        assert!(check(&format!("{slice}addressType: null\nendpoints:\n")));
    }

    #[test]
    fn aliases_are_charged_to_the_node_budget() {
        let doc = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: a}}\nx: &a [{}]\ny: [{}]\n",
            vec!["1"; 1000].join(","),
            vec!["*a"; 100].join(",")
        );
        assert!(
            decode(&doc, usize::MAX).is_none(),
            "100,000 nodes from a small text"
        );
        assert!(check(&doc.replace(&vec!["*a"; 100].join(","), "*a")));
    }

    #[test]
    fn corpus_documents_decode_directly_only_as_the_general_path_does() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus");
        let mut direct = 0;
        for entry in std::fs::read_dir(corpus).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let Ok(text) = documents::decode(&bytes) else {
                continue;
            };
            for document in documents::split(&text) {
                direct += usize::from(check(document.text));
            }
        }
        assert!(direct > 20, "{direct}");
    }

    /// Documents mutated one character or one line at a time: whatever direct decoding
    /// accepts, the general path accepts too, and decodes to the same object.
    #[test]
    fn mutated_documents_decode_directly_only_as_the_general_path_does() {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let insertions = [
            "'", "\"", "[", "{", "]", "}", "#", " ", "\n", ":", "-", ",", "0", "7", "x", "~",
            "null", "true", "&a ", "*a", "!t ", "<<: ", "  ",
        ];
        let docs = documents();
        let (mut direct, mut total) = (0, 0);
        for _ in 0..3000 {
            let mut doc = docs[(next() % docs.len() as u64) as usize].clone();
            for _ in 0..=(next() % 2) {
                mutate(&mut doc, &mut next, &insertions);
            }
            total += 1;
            direct += usize::from(check(&doc));
        }
        // Mostly still valid, so both outcomes were exercised.
        assert!(direct > total / 5 && direct < total, "{direct} of {total}");
    }

    fn mutate(doc: &mut String, next: &mut impl FnMut() -> u64, insertions: &[&str]) {
        let lines: Vec<&str> = doc.lines().collect();
        let line = (next() % lines.len() as u64) as usize;
        match next() % 5 {
            // A value of another type.
            4 => {
                let values = [
                    "80", "-1", "1.5", "true", "null", "~", "'7'", "[]", "{}", "x",
                ];
                let value = values[(next() % values.len() as u64) as usize];
                let Some(at) = doc.match_indices(": ").map(|(at, _)| at + 2).nth(line) else {
                    return;
                };
                let end = doc[at..]
                    .find([',', '}', ']', '\n'])
                    .map_or(doc.len(), |n| at + n);
                doc.replace_range(at..end, value);
            }
            // A line twice: duplicate keys at every level.
            0 => {
                let mut lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                lines.insert(line, lines[line].clone());
                *doc = lines.join("\n") + "\n";
            }
            1 => {
                let at = (next() % doc.len() as u64) as usize;
                if doc.is_char_boundary(at) {
                    doc.remove(at);
                }
            }
            _ => {
                let at = (next() % (doc.len() as u64 + 1)) as usize;
                let text = insertions[(next() % insertions.len() as u64) as usize];
                if doc.is_char_boundary(at) {
                    doc.insert_str(at, text);
                }
            }
        }
    }
}
