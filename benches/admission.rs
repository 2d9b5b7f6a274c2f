//! Criterion benchmark of the admission check: the address limit, the key's per-minute and
//! concurrency limits and the project's monthly quotas together, then the settlement, with
//! 100,000 projects (one key each) in memory.
//!
//! Run with `cargo bench --bench admission`. The token estimate (the tokenizer) is not part of
//! the check and is not measured here. docs/BENCHMARKS.md records the figures.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use watchllm::limits::clock::ManualClock;
use watchllm::limits::quota::Totals;
use watchllm::limits::settings::{parse_limits, LimitSettings, RawLimits};
use watchllm::limits::{Limiter, Requester};

const PROJECTS: usize = 100_000;

/// Limits high enough that no iteration is rejected, so every limit is checked in full.
const PLAN: &str = "plans:\n  pro:\n    monthly_requests: 1000000000000\n    monthly_tokens: 1000000000000000\n    monthly_cost_usd: 1000000000\n    requests_per_minute: 1000000000000\n    tokens_per_minute: 1000000000000000\n    max_concurrent_requests: 1000\nip:\n  requests_per_second: 1000000000\n  burst: 1000000000\n";

struct Fixture {
    settings: LimitSettings,
    limiter: Limiter,
    projects: Vec<(String, String, String)>,
    addresses: Vec<IpAddr>,
}

fn fixture() -> Fixture {
    let raw: RawLimits = serde_yaml_ng::from_str(PLAN).expect("the benchmark plan is valid YAML");
    let mut problems = Vec::new();
    let settings = parse_limits(&raw, &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    let limiter = Limiter::new(Arc::new(ManualClock::new(1_780_000_000_000)));
    let projects: Vec<(String, String, String)> =
        (0..PROJECTS).map(|i| (format!("proj_{i:016x}"), format!("project-{i}"), format!("key_{i:016x}"))).collect();
    let addresses = (0..PROJECTS as u32).map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))).collect();

    // Every project and key gets its counters before the measurement.
    for (id, name, key) in &projects {
        let who = Requester { project_id: id, project_name: name, plan: "pro", key_id: key };
        let admission = limiter.admit(&settings, who, Totals { requests: 1, tokens: 100, cost_usd: 0.001 });
        admission.result.expect("the benchmark limits admit everything").settle(Totals { requests: 1, tokens: 80, cost_usd: 0.0008 }, &[0.8, 1.0]);
    }
    Fixture { settings, limiter, projects, addresses }
}

fn admission(c: &mut Criterion) {
    let fixture = fixture();
    let thresholds = [0.8, 1.0];
    let estimate = Totals { requests: 1, tokens: 1_100, cost_usd: 0.002 };
    let actual = Totals { requests: 1, tokens: 420, cost_usd: 0.0007 };

    // The requester's ids come from the key record that authentication has just read, so in the
    // gateway they are in cache. They are read before the timed part, and the limiter's own
    // state, spread over 100,000 projects, stays cold.
    let mut next = 0usize;
    c.bench_function("admission: ip + key + monthly, admit and settle (100k projects)", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                next = (next + 7919) % PROJECTS;
                let (id, name, key) = &fixture.projects[next];
                let address = fixture.addresses[next];
                black_box((id.as_bytes()[0], name.as_bytes()[0], key.as_bytes()[0]));
                let started = Instant::now();
                fixture.limiter.ip.check(address, &fixture.settings.ip).expect("the address limit is high");
                let who = Requester { project_id: id, project_name: name, plan: "pro", key_id: key };
                let admission = fixture.limiter.admit(&fixture.settings, black_box(who), black_box(estimate));
                let mut reservation = admission.result.expect("the benchmark limits admit everything");
                black_box(reservation.settle(actual, &thresholds));
                total += started.elapsed();
            }
            total
        })
    });

    // The same with the requester's ids read from memory inside the timed part: three strings and
    // their entry in a 7 MB table, which the gateway does not pay again after authentication.
    let mut next = 0usize;
    c.bench_function("admission: the same, ids not in cache", |b| {
        b.iter(|| {
            next = (next + 7919) % PROJECTS;
            let (id, name, key) = &fixture.projects[next];
            fixture.limiter.ip.check(fixture.addresses[next], &fixture.settings.ip).expect("the address limit is high");
            let who = Requester { project_id: id, project_name: name, plan: "pro", key_id: key };
            let admission = fixture.limiter.admit(&fixture.settings, black_box(who), black_box(estimate));
            let mut reservation = admission.result.expect("the benchmark limits admit everything");
            black_box(reservation.settle(actual, &thresholds));
        })
    });

    // What `Instant::now` and `elapsed` add to each timed iteration above.
    c.bench_function("admission: timer alone", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let started = Instant::now();
                total += started.elapsed();
            }
            total
        })
    });

    let mut next = 0usize;
    c.bench_function("admission: ip limit alone", |b| {
        b.iter(|| {
            next = (next + 7919) % PROJECTS;
            black_box(fixture.limiter.ip.check(fixture.addresses[next], &fixture.settings.ip)).ok();
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = admission
}
criterion_main!(benches);
