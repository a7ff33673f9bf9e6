//! Namespaced test cluster.
