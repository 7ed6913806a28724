//! Time the "body in, node names out" path on a list body from a file, in Rust alone.
//! `cargo run --release -p libcluster_core --example parse_list -- pods /tmp/k8s_pods.json`
use std::time::Instant;

use libcluster_core::kubernetes::{names_from_list, Lookup, NameMode, Naming};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let lookup = match args.get(1).map(String::as_str) {
        Some("pods") => Lookup::Pods { ready_only: false },
        Some("ready-pods") => Lookup::Pods { ready_only: true },
        Some("endpointslices") => Lookup::EndpointSlices,
        _ => Lookup::Endpoints,
    };
    let body = std::fs::read(args.get(2).expect("a body file")).expect("readable body");
    let naming = Naming {
        basename: "myapp".into(),
        mode: NameMode::Ip,
        service_name: None,
        cluster_domain: "cluster.local".into(),
    };
    let cpu0 = cpu_ms();
    let mut times = Vec::new();
    let mut count = 0;
    for _ in 0..21 {
        let t = Instant::now();
        let (names, _) = names_from_list(lookup, &naming, "default", &body).expect("parses");
        times.push(t.elapsed());
        count = names.len();
    }
    let cpu = (cpu_ms() - cpu0) / times.len() as f64;
    // Baseline: serde_json skipping the whole body, building nothing.
    let mut skip = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let _: serde::de::IgnoredAny = serde_json::from_slice(&body).expect("json");
        skip.push(t.elapsed());
    }
    skip.sort();
    println!(
        "baseline: serde_json skipping the body: median {:?}",
        skip[skip.len() / 2]
    );
    times.sort();
    println!(
        "{} bytes, {count} names, median wall {:?}, mean CPU {cpu:.1} ms",
        body.len(),
        times[times.len() / 2]
    );
}

/// This process's user + system CPU time in ms (Linux, 10 ms ticks: averaged over the runs).
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields after the command: state is index 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) * 10.0
}
