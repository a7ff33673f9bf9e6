//! compute on arbitrary clusters: never panics, every service plan passes
//! `ServicePlan::validate()`, the incremental plan equals a plan made from scratch, and the
//! delta turns the old plan into the new one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_fuzz::ClusterInput;

fuzz_target!(|input: ClusterInput| {
    let generated = input.generate();
    sluice_fuzz::plan_both(&generated);
});
