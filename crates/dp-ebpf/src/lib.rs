//! eBPF dataplane for sluice.
