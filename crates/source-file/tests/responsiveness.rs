//! A manifest that is slow to parse must not stall the async runtime the agent shares with
//! its health endpoint, dataplane sync and ingress proxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice_model::Store;
use sluice_source_file::{DirSource, Problem, load_dir};
use tokio::sync::mpsc;

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const GOOD: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";

/// 40,000 nested flow sequences: 80 KB that take libyaml seconds (quadratic in depth).
fn deep_document() -> String {
    let levels = 40_000;
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: deep}}\nspec: {}{}\n",
        "[".repeat(levels),
        "]".repeat(levels)
    )
}

/// A single-threaded runtime is the worst case: any blocking work on it stops every task.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_parse_does_not_stall_a_ticking_task() {
    let dir = tempdir("stall");
    std::fs::write(dir.join("a-deep.yaml"), deep_document()).unwrap();
    std::fs::write(dir.join("b-good.yaml"), GOOD).unwrap();
    // Lift the depth limit so the YAML parser really does the slow work.
    let source = DirSource::new(&dir).with_max_depth(usize::MAX);

    let stop = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut longest = Duration::ZERO;
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                longest = longest.max(last.elapsed());
                last = Instant::now();
            }
            longest
        }
    });
    let (tx, mut rx) = mpsc::channel(4);
    let started = Instant::now();
    let source_task = tokio::spawn(source.run(tx));
    let batch = tokio::time::timeout(Duration::from_secs(300), rx.recv())
        .await
        .expect("the first read within 5 minutes")
        .unwrap();
    let parse_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let longest_stall = ticker.await.unwrap();
    let mut store = Store::new();
    store.apply_all(batch.events);
    assert!(store.is_synced());
    let snapshot = store.snapshot();
    assert_eq!(
        snapshot
            .services
            .keys()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["default/web"]
    );
    eprintln!("first snapshot after {parse_time:?}; longest gap between ticks {longest_stall:?}");
    // Parsing on the runtime stalled it for the whole parse (seconds); the bound is generous
    // so a loaded machine cannot make it flaky.
    assert!(
        longest_stall < Duration::from_secs(1),
        "the runtime stalled for {longest_stall:?}"
    );
    drop(rx);
    source_task.await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn with_the_default_limit_the_deep_file_is_refused_before_parsing() {
    let dir = tempdir("deep-default");
    std::fs::write(dir.join("a-deep.yaml"), deep_document()).unwrap();
    std::fs::write(dir.join("b-good.yaml"), GOOD).unwrap();
    let (snapshot, warnings) = load_dir(&dir).unwrap();
    assert_eq!(snapshot.services.len(), 1);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].file, "a-deep.yaml");
    assert_eq!(warnings[0].document, 1);
    assert_eq!(warnings[0].problem, Problem::TooDeep { limit: 64, line: 4 });
    std::fs::remove_dir_all(&dir).unwrap();
}
