//! [`Name`]: a shared, immutable name read from many objects (an endpoint's node and zone).
//!
//! At 100,000 Services × 10 endpoints, one `String` per endpoint for its node name is a
//! million heap allocations of a few dozen distinct names (about 40 MiB). Decoded names are
//! interned per thread, without a lock on the first read's parser threads: every endpoint on
//! a node decoded by the same thread holds the same `Arc<str>` (a few copies of each name in
//! all).

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, Serializer};

/// Distinct names the interner keeps before starting over (names already handed out stay
/// valid; only sharing with later ones is lost). Far above any cluster's nodes and zones.
const INTERNED_MAX: usize = 1 << 16;

thread_local! {
    static INTERNED: RefCell<HashSet<Arc<str>>> = RefCell::default();
}

/// A shared name; reads as `&str` (`Option<Name>::as_deref()` is an `Option<&str>`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<str>);

impl Name {
    /// This thread's shared copy of `name`.
    pub fn interned(name: &str) -> Self {
        INTERNED.with_borrow_mut(|set| {
            if let Some(shared) = set.get(name) {
                return Name(Arc::clone(shared));
            }
            if set.len() >= INTERNED_MAX {
                set.clear();
            }
            let shared: Arc<str> = Arc::from(name);
            set.insert(Arc::clone(&shared));
            Name(shared)
        })
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(name: &str) -> Self {
        Name::interned(name)
    }
}

impl From<String> for Name {
    fn from(name: String) -> Self {
        Name::interned(&name)
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // As a `String` deserializes (same accepted input, same error text), then interned.
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Name::interned(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_share_one_copy_and_read_as_str() {
        let a: Name = serde_json::from_str("\"node-interned-a\"").unwrap();
        let b = Name::from("node-interned-a".to_owned());
        assert!(Arc::ptr_eq(&a.0, &b.0), "one allocation for both");
        assert_eq!(Some(a.clone()).as_deref(), Some("node-interned-a"));
        assert_eq!(a, "node-interned-a");
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"node-interned-a\"");
        assert_eq!(format!("{a} {a:?}"), "node-interned-a \"node-interned-a\"");
    }

    #[test]
    fn a_name_is_refused_where_a_string_would_be() {
        let number = serde_json::from_str::<Name>("12").unwrap_err();
        let string = serde_json::from_str::<String>("12").unwrap_err();
        assert_eq!(number.to_string(), string.to_string());
    }
}
