//! Criterion benchmarks of upstream selection: sticky variant assignment and the decryption of a
//! project's provider key with its derived cipher already cached.
//!
//! Run with `cargo bench --bench routing`. docs/BENCHMARKS.md records the figures.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use watchllm::config::{ModelPrice, ModelRoute, Provider};
use watchllm::keys::crypto::{last_four, seal};
use watchllm::keys::store::ProviderKeyRecord;
use watchllm::keys::{MasterSecret, RecordSnapshot, Vault};
use watchllm::routing::experiments::{Experiment, Variant};

fn provider(name: &str) -> Arc<Provider> {
    Arc::new(Provider {
        name: name.into(),
        tls: false,
        host: "127.0.0.1".into(),
        port: 9090,
        address: Some(([127, 0, 0, 1], 9090).into()),
        base_path: "/v1".into(),
        sni: "127.0.0.1".into(),
        api_key: None,
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(1),
    })
}

fn experiment(weights: &[f64]) -> Experiment {
    let variants = weights
        .iter()
        .enumerate()
        .map(|(index, weight)| Variant {
            name: format!("variant-{index}"),
            weight: *weight,
            model: "gpt-4o-mini".into(),
            route: ModelRoute {
                name: "gpt-4o".into(),
                provider: provider("mock"),
                upstream_model: "gpt-4o-mini".into(),
                price: ModelPrice { input: 0.15, cached_input: None, output: 0.6 },
            },
            parameters: Default::default(),
        })
        .collect();
    Experiment::new("bench".into(), "gpt-4o".into(), String::new(), true, variants)
}

fn assignment(c: &mut Criterion) {
    let two = experiment(&[0.995, 0.005]);
    let five = experiment(&[1.0, 1.0, 1.0, 1.0, 0.0]);
    let mut group = c.benchmark_group("experiments");
    group.bench_function("assign_2_variants", |b| b.iter(|| black_box(two.assign(black_box("user-12345")))));
    group.bench_function("assign_5_variants", |b| b.iter(|| black_box(five.assign(black_box("user-12345")))));
    group.finish();
}

fn decryption(c: &mut Criterion) {
    let master = MasterSecret::new(b"benchmark-master-secret-0123456789".to_vec()).expect("valid master secret");
    let key = "sk-proj-benchmark-0123456789abcdefghijklmnopqrstuvwxyz";
    let record = ProviderKeyRecord {
        project_id: "proj_0123456789abcdef".into(),
        provider: "openai".into(),
        sealed: seal(&master, "proj_0123456789abcdef", "openai", key),
        key_version: 1,
        last_four: last_four(key),
        created_at_ms: 0,
        rotated_at_ms: None,
    };
    let vault = Vault::new(Some(master));
    vault.replace_snapshot(RecordSnapshot::new(1, vec![record]));
    assert_eq!(vault.warm_up(), 1, "the cipher must be derived before measuring");

    let mut group = c.benchmark_group("provider_keys");
    group.bench_function("decrypt_cached_cipher", |b| {
        b.iter(|| black_box(vault.resolve_cached(black_box("proj_0123456789abcdef"), black_box("openai"))))
    });
    group.bench_function("lookup_without_record", |b| b.iter(|| black_box(vault.has_key(black_box("proj_none"), black_box("openai")))));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    targets = assignment, decryption
}
criterion_main!(benches);
