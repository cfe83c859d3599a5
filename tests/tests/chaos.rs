//! The chaos suite's CI version: about two minutes of a Kafka job under at least ten executor
//! kills, ten driver kills and ten executor stops past the heartbeat timeout, with the object
//! store failing and stalling some writes; the output must equal what was produced, exactly.
//! `cargo xtask chaos --minutes N --seed S` runs the long version.

use sluice_cluster_tests::chaos::{ChaosConfig, run};
use std::time::Duration;

#[test]
fn two_minutes_of_faults_lose_and_duplicate_nothing() {
    let secs = std::env::var("SLUICE_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let cfg = ChaosConfig {
        duration: Duration::from_secs(secs),
        seed: 20261125,
        failures_each: if secs >= 120 { 10 } else { 3 },
        rate: 500,
    };
    let report = run(&cfg, &sluice_cluster_tests::bin_dir());
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report["exact"], true, "seed {}: {report:#}", cfg.seed);
    assert!(
        report["store_write_failures"].as_u64().unwrap() >= 10,
        "{report:#}"
    );
    assert_eq!(report["unrecovered_faults"], 0, "{report:#}");
}
