//! The plan → nftables translation: the full script of a plan, and the delta to the next
//! plan, always apply to a model of nf_tables (objects exist before use, chains deleted only
//! when empty and unreferenced, map keys not overwritten, every reference defined, names nft
//! accepts), and first-plan-then-delta leaves what the full script of the second plan makes,
//! up to where endpoints sit in the slot maps and pick chains left unused
//! (`Ruleset::semantic`). `SLUICE_FUZZ_NFT_OUT=DIR` writes each input's scripts there, for
//! `cargo xtask fuzz` to load into a scratch network namespace with the real `nft`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_dataplane::Dataplane;
use sluice_dp_nft::{FakeNft, NftDataplane};
use sluice_fuzz::ClusterInput;
use sluice_fuzz::nft_sim::Ruleset;

fn save(scripts: &[(&str, &str)]) {
    let Some(dir) = std::env::var_os("SLUICE_FUZZ_NFT_OUT") else {
        return;
    };
    let all: String = scripts.iter().map(|(_, s)| *s).collect();
    let id = sluice_dp_nft::render::short_hash(&all);
    for (i, (name, script)) in scripts.iter().enumerate() {
        let path = std::path::Path::new(&dir).join(format!("{id}-{i}-{name}.nft"));
        let _ = std::fs::write(path, script);
    }
}

fuzz_target!(|input: ClusterInput| {
    let g = input.generate();
    let (first, second, delta) = sluice_fuzz::plan_both(&g);
    let fake = FakeNft::new();
    let mut dp = NftDataplane::with_executor(fake.clone());
    dp.resync(&first).expect("the fake refuses nothing");
    dp.apply(&delta).expect("the fake refuses nothing");
    let applied = fake.state().applied.clone();
    let full_first = NftDataplane::<FakeNft>::render_plan(&first);
    let full_second = NftDataplane::<FakeNft>::render_plan(&second);
    assert_eq!(
        applied.first(),
        Some(&full_first),
        "first resync is the full script"
    );
    let mut incremental = Ruleset::default();
    for script in &applied {
        if let Err(e) = incremental.apply(script) {
            panic!("script refused: {e}\n{script}");
        }
    }
    let mut scratch = Ruleset::default();
    if let Err(e) = scratch.apply(&full_second) {
        panic!("full script refused: {e}\n{full_second}");
    }
    assert_eq!(
        incremental.semantic(),
        scratch.semantic(),
        "full + delta differs from the full script of the result"
    );
    let delta_text: String = applied[1..].concat();
    save(&[("full", &full_first), ("delta", &delta_text)]);
});
