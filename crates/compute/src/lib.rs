//! Pure Service semantics: `(&Snapshot, &NodeInfo, &ComputeConfig) -> DesiredState`.
