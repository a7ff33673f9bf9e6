//! Objects from their JSON (test fixtures, examples): `kind` picks the type, `metadata` the key.

use std::sync::Arc;

use serde_json::Value;

use crate::{Object, ObjectKey, Snapshot, SourceEvent, Store};

#[derive(Debug, thiserror::Error)]
pub enum ObjectJsonError {
    #[error("object without metadata.name: {0}")]
    NoName(String),
    #[error("kind {kind:?} of {key} is not one the snapshot holds")]
    UnknownKind { kind: String, key: ObjectKey },
    #[error("{kind} {key} does not decode")]
    Decode {
        kind: String,
        key: ObjectKey,
        #[source]
        source: serde_json::Error,
    },
}

impl Object {
    /// The object `value` describes, and its key.
    pub fn from_json(value: Value) -> Result<(ObjectKey, Object), ObjectJsonError> {
        let meta = &value["metadata"];
        let name = meta["name"]
            .as_str()
            .ok_or_else(|| ObjectJsonError::NoName(value.to_string()))?;
        let key = ObjectKey::new(meta["namespace"].as_str().unwrap_or(""), name);
        let kind = value["kind"].as_str().unwrap_or("").to_owned();
        let object = match kind.as_str() {
            "Service" => Object::Service(decode(value, &kind, &key)?),
            "EndpointSlice" => Object::EndpointSlice(decode(value, &kind, &key)?),
            "Node" => Object::Node(decode(value, &kind, &key)?),
            "Ingress" => Object::Ingress(decode(value, &kind, &key)?),
            "IngressClass" => Object::IngressClass(decode(value, &kind, &key)?),
            "Secret" => Object::Secret(decode(value, &kind, &key)?),
            _ => return Err(ObjectJsonError::UnknownKind { kind, key }),
        };
        Ok((key, object))
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    value: Value,
    kind: &str,
    key: &ObjectKey,
) -> Result<Arc<T>, ObjectJsonError> {
    serde_json::from_value(value)
        .map(Arc::new)
        .map_err(|source| ObjectJsonError::Decode {
            kind: kind.to_owned(),
            key: key.clone(),
            source,
        })
}

impl Snapshot {
    /// A snapshot holding these objects (a later one with the same kind and key wins).
    pub fn from_json_objects(
        values: impl IntoIterator<Item = Value>,
    ) -> Result<Snapshot, ObjectJsonError> {
        let mut store = Store::new();
        for value in values {
            let (key, object) = Object::from_json(value)?;
            store.apply(SourceEvent::Apply(key, object));
        }
        Ok(store.into_snapshot())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kinds_are_decoded_and_errors_name_the_object() {
        let s = Snapshot::from_json_objects([
            json!({"kind": "Service", "metadata": {"namespace": "a", "name": "web"},
                   "spec": {"clusterIP": "10.96.0.1"}}),
            json!({"kind": "IngressClass", "metadata": {"name": "sluice"}}),
        ])
        .unwrap();
        assert!(s.services.contains_key(&ObjectKey::new("a", "web")));
        assert!(
            s.ingress_classes
                .contains_key(&ObjectKey::cluster("sluice"))
        );
        let err = Snapshot::from_json_objects([
            json!({"kind": "ConfigMap", "metadata": {"namespace": "a", "name": "x"}}),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "kind \"ConfigMap\" of a/x is not one the snapshot holds"
        );
        let err = Snapshot::from_json_objects([
            json!({"kind": "Service", "metadata": {"namespace": "a", "name": "x"}, "spec": 5}),
        ])
        .unwrap_err();
        assert!(
            err.to_string().starts_with("Service a/x does not decode"),
            "{err}"
        );
    }
}
