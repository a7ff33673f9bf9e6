//! YAML text to `serde_yaml::Value` with a bound on the number of nodes built.
//!
//! Why: a YAML alias (`*a`) repeats its whole anchor. serde_yaml limits the number of alias
//! jumps but not the size of what they repeat, so a 2 MB document with one anchor of a million
//! items referenced 200 times built a 200-million-node value (14 GB of memory, 37 s). Without
//! aliases a document has fewer nodes than bytes, so the budget is the document's length plus
//! a small allowance: legitimate anchors still work, alias bombs stop early.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde_yaml::value::{Tag, TaggedValue};
use serde_yaml::{Mapping, Value};

/// Nodes allowed beyond one per byte of the document.
pub(crate) const ALLOWANCE: usize = 10_000;

pub(crate) enum ValueError {
    TooManyNodes { limit: usize },
    Yaml(serde_yaml::Error),
}

/// Parses one YAML document into at most `max_nodes` nodes.
pub(crate) fn parse(document: &str, max_nodes: usize) -> Result<Value, ValueError> {
    let limit = document.len().saturating_add(ALLOWANCE).min(max_nodes);
    let budget = Budget {
        left: Cell::new(limit),
    };
    let deserializer = serde_yaml::Deserializer::from_str(document);
    Bounded { budget: &budget }
        .deserialize(deserializer)
        .map_err(|err| {
            if budget.left.get() == 0 {
                ValueError::TooManyNodes { limit }
            } else {
                ValueError::Yaml(err)
            }
        })
}

struct Budget {
    left: Cell<usize>,
}

impl Budget {
    fn take<E: de::Error>(&self) -> Result<(), E> {
        match self.left.get() {
            0 => Err(E::custom("too many YAML nodes")),
            n => {
                self.left.set(n - 1);
                Ok(())
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Bounded<'b> {
    budget: &'b Budget,
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// The same values serde_yaml's own `Value` visitor builds, each one charged to the budget.
impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::Number(i.into()))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::Number(u.into()))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::Number(f.into()))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.budget.take()?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.budget.take()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.budget.take()?;
        let mut mapping = Mapping::new();
        while let Some(key) = map.next_key_seed(self)? {
            if mapping.contains_key(&key) {
                return Err(de::Error::custom(duplicate_key(&key)));
            }
            let value = map.next_value_seed(self)?;
            mapping.insert(key, value);
        }
        Ok(Value::Mapping(mapping))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        self.budget.take()?;
        let (tag, contents): (String, _) = data.variant()?;
        if tag.is_empty() {
            return Err(de::Error::custom("empty YAML tag is not allowed"));
        }
        let value = contents.newtype_variant_seed(self)?;
        Ok(Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        })))
    }
}

/// Same wording as serde_yaml's own duplicate-key error.
fn duplicate_key(key: &Value) -> String {
    match key {
        Value::String(s) => format!("duplicate entry with key {s:?}"),
        Value::Number(n) => format!("duplicate entry with key {n}"),
        Value::Bool(b) => format!("duplicate entry with key `{b}`"),
        Value::Null => "duplicate entry with null key".to_owned(),
        _ => "duplicate entry in YAML map".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Value {
        match parse(text, usize::MAX) {
            Ok(value) => value,
            Err(ValueError::TooManyNodes { limit }) => panic!("too many nodes ({limit})"),
            Err(ValueError::Yaml(err)) => panic!("{err}"),
        }
    }

    #[test]
    fn builds_the_same_value_as_serde_yaml() {
        let text =
            "a: [1, -2, 3.5, true, ~, x]\nb: {c: !custom d}\n'e': &anchor {f: g}\nh: *anchor\n";
        let expected: Value = serde_yaml::from_str(text).unwrap();
        assert_eq!(parsed(text), expected);
    }

    #[test]
    fn alias_bombs_stop_at_the_node_budget() {
        let mut text = format!("a: &a [{}]\nb: [", vec!["1"; 100_000].join(","));
        text.push_str(&vec!["*a"; 50].join(","));
        text.push_str("]\n");
        assert!(matches!(
            parse(&text, usize::MAX),
            Err(ValueError::TooManyNodes { limit }) if limit == text.len() + ALLOWANCE
        ));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let Err(ValueError::Yaml(err)) = parse("a: 1\nb: 2\na: 3\n", usize::MAX) else {
            panic!("duplicate key accepted")
        };
        assert!(
            err.to_string()
                .starts_with("duplicate entry with key \"a\""),
            "{err}"
        );
    }
}
