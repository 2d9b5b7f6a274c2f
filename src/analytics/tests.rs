//! Store-backed analytics tests, each on SQLite and on PostgreSQL. Rollups equal a direct
//! aggregation of random event sets, also after duplicate inserts, a journal replay and a
//! rebuild. The budget alert fires once. A busy month's queries are timed.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use chrono_tz::Tz;

use super::alert::check_budget_alert;
use super::month::project_forecast;
use crate::alerts::{alert_channel, Alert};
use super::rollup::{aggregate, Granularity, RollupKey, RollupValues, Rollups, DAY_MS, HOUR_MS, LATENCY_BOUNDS_MS};
use crate::accounting::journal::Journal;
use crate::accounting::UsageEvent;
use crate::store::rollups::GroupBy;
use crate::store::test_support::{sqlite_store, with_postgres_store};
use crate::store::Store;

macro_rules! dialect_tests {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $check() {
                    let dir = tempfile::tempdir().expect("temporary directory");
                    let store = super::sqlite_store(dir.path()).await;
                    super::$check(&store, dir.path()).await;
                    store.close().await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test]
                async fn $check() {
                    let dir = tempfile::tempdir().expect("temporary directory");
                    let path = dir.path().to_path_buf();
                    super::with_postgres_store(|store| async move { super::$check(&store, &path).await }).await;
                }
            )*
        }
    };
}

dialect_tests!(rollups_match_random_events, budget_alert_fires_once, forecast_in_project_time_zone, busy_month_query_time);

/// 2026-11-30T20:00:00Z: random events span the end of November and the start of December.
const WINDOW_START_MS: i64 = 1_796_068_800_000;

fn random_event(rng: &mut StdRng) -> UsageEvent {
    let pick = |rng: &mut StdRng, options: &[&str]| options[rng.gen_range(0..options.len())].to_string();
    // Latencies often sit exactly on a bucket bound, or one past it, to test the bucket edges.
    let latency_ms = match rng.gen_range(0..3) {
        0 => LATENCY_BOUNDS_MS[rng.gen_range(0..LATENCY_BOUNDS_MS.len())] + rng.gen_range(0..2),
        1 => rng.gen_range(0..1_000),
        _ => rng.gen_range(0..120_000),
    };
    UsageEvent {
        id: uuid::Uuid::new_v4().to_string(),
        created_at_ms: WINDOW_START_MS + rng.gen_range(0..2 * DAY_MS),
        project_id: pick(rng, &["proj_a", "proj_b", "proj_c"]),
        key_id: "key_1".into(),
        endpoint: "chat.completions".into(),
        model: pick(rng, &["gpt-4o", "gpt-4o-mini", "llama"]),
        provider: pick(rng, &["openai", "openrouter"]),
        upstream_model: "upstream".into(),
        status: [200, 200, 200, 429, 502, 0][rng.gen_range(0..6)],
        stream: rng.gen(),
        prompt_tokens: rng.gen_range(0..5_000),
        completion_tokens: rng.gen_range(0..2_000),
        cached_tokens: rng.gen_range(0..100),
        reasoning_tokens: rng.gen_range(0..100),
        total_tokens: rng.gen_range(0..7_000),
        tokens_estimated: rng.gen(),
        cost_usd: rng.gen_range(0.0..0.5),
        potential_cost_usd: rng.gen_range(0.0..0.8),
        cache_status: pick(rng, &["none", "miss", "hit-exact", "hit-semantic", "bypass"]),
        latency_ms,
        ttfb_ms: None,
        error_type: if rng.gen_bool(0.1) { Some("client_disconnected".into()) } else { None },
        key_source: "global".into(),
        variant: [None, Some("a".to_string()), Some("b".to_string())][rng.gen_range(0..3)].clone(),
        cache_similarity: None,
    }
}

/// Asserts that two rollup sets have the same keys and sums; costs may differ by rounding.
fn assert_rollups_equal(actual: &Rollups, expected: &Rollups, context: &str) {
    let actual_keys: Vec<&RollupKey> = actual.keys().collect();
    let expected_keys: Vec<&RollupKey> = expected.keys().collect();
    assert_eq!(actual_keys, expected_keys, "{context}: rollup keys");
    for (key, expected) in expected {
        let actual = &actual[key];
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(close(actual.cost_usd, expected.cost_usd), "{context}: cost of {key:?}: {} != {}", actual.cost_usd, expected.cost_usd);
        assert!(close(actual.potential_cost_usd, expected.potential_cost_usd), "{context}: potential cost of {key:?}");
        let without_costs = |values: &RollupValues| RollupValues { cost_usd: 0.0, potential_cost_usd: 0.0, ..values.clone() };
        assert_eq!(without_costs(actual), without_costs(expected), "{context}: sums of {key:?}");
    }
}

async fn assert_store_matches(store: &Store, events: &[UsageEvent], context: &str) {
    for granularity in [Granularity::Hour, Granularity::Day] {
        let stored = store.list_rollups(granularity).await.expect("list rollups");
        assert_rollups_equal(&stored, &aggregate(granularity, events), &format!("{context}, {granularity:?}"));
    }
}

async fn rollups_match_random_events(store: &Store, dir: &std::path::Path) {
    let mut rng = StdRng::seed_from_u64(0x5eed_2026);
    let journal = Journal::open(&dir.join("journal")).expect("open journal");
    let mut stored: Vec<UsageEvent> = Vec::new();

    for round in 0..25 {
        let fresh: Vec<UsageEvent> = (0..rng.gen_range(0..120)).map(|_| random_event(&mut rng)).collect();
        // A batch mixes new events, copies of stored ones and a duplicate id within the batch.
        let mut batch = fresh.clone();
        for _ in 0..rng.gen_range(0..10) {
            if !stored.is_empty() {
                batch.push(stored[rng.gen_range(0..stored.len())].clone());
            }
        }
        if let Some(first) = fresh.first() {
            batch.push(UsageEvent { cost_usd: 99.0, ..first.clone() });
        }
        let inserted = store.insert_usage_events(&batch).await.expect("insert batch");
        assert_eq!(inserted, fresh.len() as u64, "round {round}: events inserted");
        stored.extend(fresh);

        // A journal holding stored and new events, replayed twice, adds only the new ones.
        let replayed: Vec<UsageEvent> = (0..rng.gen_range(0..30)).map(|_| random_event(&mut rng)).collect();
        let mut journaled = replayed.clone();
        journaled.extend(stored.iter().take(5).cloned());
        journal.append(&journaled).expect("append to journal");
        journal.replay(store).await.expect("replay journal");
        journal.append(&journaled).expect("append to journal again");
        journal.replay(store).await.expect("replay journal again");
        stored.extend(replayed);

        assert_store_matches(store, &stored, &format!("round {round}")).await;
    }

    let rebuilt = store.rebuild_rollups(WINDOW_START_MS, WINDOW_START_MS + 2 * DAY_MS).await.expect("rebuild");
    assert_eq!(rebuilt, stored.len() as i64);
    assert_store_matches(store, &stored, "after rebuild").await;

    // The query path sums the same rows: a project's day totals by model equal the events'.
    let day = Granularity::Day.bucket_start(WINDOW_START_MS) + DAY_MS;
    let rows = store.query_rollups("proj_a", Granularity::Day, day, day + DAY_MS, Some(GroupBy::Model)).await.expect("query");
    for row in rows {
        let expected: i64 = stored
            .iter()
            .filter(|e| e.project_id == "proj_a" && e.model == row.group && Granularity::Day.bucket_start(e.created_at_ms) == day)
            .count() as i64;
        assert_eq!(row.values.requests, expected, "requests of model {}", row.group);
    }
}

async fn budget_alert_fires_once(store: &Store, _dir: &std::path::Path) {
    let project = store.create_project("spender", "pro").await.expect("create project");
    let now = WINDOW_START_MS + 20 * DAY_MS;
    let events: Vec<UsageEvent> = (0..20)
        .map(|day| UsageEvent {
            id: format!("event-{day}"),
            project_id: project.id.clone(),
            created_at_ms: now - day * DAY_MS,
            cost_usd: 10.0,
            potential_cost_usd: 10.0,
            cache_status: "none".into(),
            status: 200,
            ..UsageEvent::default()
        })
        .collect();
    store.insert_usage_events(&events).await.expect("insert events");

    // Spending 10 a day, December ends near 310, far above a budget of 50.
    let (sink, mut receiver) = alert_channel();
    let forecast = project_forecast(store, &project.id, now, Some(50.0), Tz::UTC).await.expect("forecast");
    assert!(forecast.projected_budget_exceeded, "{forecast:?}");
    assert!(check_budget_alert(store, &sink, &forecast).await.expect("first check"));
    assert!(!check_budget_alert(store, &sink, &forecast).await.expect("second check"));
    let alerts = store.list_alerts(&project.id).await.expect("list alerts");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].0, format!("projected_budget_exceeded:{}:2026-12", project.id));

    // Only the first check hands the alert to the alert channel.
    let Some(Alert::ProjectedBudgetExceeded(sent)) = receiver.try_recv() else { panic!("no budget alert in the alert channel") };
    assert_eq!(sent.id, alerts[0].0);
    assert_eq!(sent.project_id, project.id);
    assert_eq!(sent.month, "2026-12");
    assert_eq!(sent.budget_usd, 50.0);
    assert_eq!(sent.projected_month_end_usd, forecast.projected_month_end_usd);
    assert!(sent.interval.lower_usd > 50.0);
    assert!(receiver.try_recv().is_none(), "a second alert reached the channel");

    let generous = project_forecast(store, &project.id, now, Some(10_000.0), Tz::UTC).await.expect("forecast");
    assert!(!generous.projected_budget_exceeded);
    assert!(generous.projected_budget_exhaustion_date.is_none());
    assert!(!check_budget_alert(store, &sink, &generous).await.expect("check under budget"));
    assert!(receiver.try_recv().is_none(), "an alert for a forecast under budget");
}

/// Checks that the forecast of a project in Asia/Tokyo (UTC+9) counts its month and days from
/// Tokyo's midnight, summing the hourly rollups.
async fn forecast_in_project_time_zone(store: &Store, _dir: &std::path::Path) {
    let project = store.create_project("tokyo", "pro").await.expect("create project");
    let tokyo: Tz = "Asia/Tokyo".parse().expect("zone");
    // 2026-12-02T03:00 in Tokyo.
    let now = 1_796_148_000_000; // 2026-12-01T18:00:00Z
    let event = |id: &str, created_at_ms: i64, cost_usd: f64| UsageEvent {
        id: id.into(),
        project_id: project.id.clone(),
        created_at_ms,
        cost_usd,
        potential_cost_usd: cost_usd,
        cache_status: "none".into(),
        status: 200,
        ..UsageEvent::default()
    };
    let december_tokyo = 1_796_050_800_000; // 2026-11-30T15:00:00Z, midnight of December 1 in Tokyo
    let events = [
        // November 30 in Tokyo and in UTC: history, not this month's spend.
        event("nov-30", december_tokyo - HOUR_MS, 4.0),
        // December 1 in Tokyo, still November 30 in UTC.
        event("dec-1-early", december_tokyo + 30 * 60_000, 1.0),
        event("dec-1-late", december_tokyo + 20 * HOUR_MS, 2.0),
        // Today in Tokyo, December 1 in UTC.
        event("dec-2", now - HOUR_MS, 0.5),
    ];
    store.insert_usage_events(&events).await.expect("insert events");

    let forecast = project_forecast(store, &project.id, now, Some(1.0), tokyo).await.expect("forecast");
    assert_eq!(forecast.month, "2026-12");
    assert_eq!(forecast.time_zone, "Asia/Tokyo");
    assert!((forecast.spend_so_far_usd - 3.5).abs() < 1e-9, "{}", forecast.spend_so_far_usd);
    assert!((forecast.spend_today_usd - 0.5).abs() < 1e-9, "{}", forecast.spend_today_usd);
    let daily: Vec<(&str, f64)> = forecast.daily.iter().map(|day| (day.date.as_str(), day.cost_usd)).collect();
    assert_eq!(daily, [("2026-12-01", 3.0), ("2026-12-02", 0.5)]);
    assert_eq!(forecast.history_days, 2);
    assert_eq!(forecast.forecast_daily.len(), 30);
    // The measured spend of December 1 already exceeds the budget.
    assert_eq!(forecast.projected_budget_exhaustion_date.as_deref(), Some("2026-12-01"));

    // In UTC, December started 9 hours later, so it holds only the 2.5 spent since then.
    let utc = project_forecast(store, &project.id, now, Some(1.0), Tz::UTC).await.expect("forecast");
    assert_eq!(utc.month, "2026-12");
    assert!((utc.spend_so_far_usd - 2.5).abs() < 1e-9, "{}", utc.spend_so_far_usd);
    assert_eq!(utc.daily.len(), 1);
}

/// Seeds the rollups of one busy month: 10 million events spread over 744 hours and 96
/// combinations (8 models, 3 variants, 4 cache statuses), then times the month's queries.
async fn busy_month_query_time(store: &Store, _dir: &std::path::Path) {
    const EVENTS: i64 = 10_000_000;
    let month_start = 1_796_083_200_000; // 2026-12-01T00:00:00Z
    let models = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8"];
    let variants = ["", "a", "b"];
    let statuses = ["miss", "hit-exact", "hit-semantic", "bypass"];
    let combinations = (models.len() * variants.len() * statuses.len()) as i64;
    let per_row = EVENTS / (744 * combinations);

    let mut hourly = Rollups::new();
    let mut daily = Rollups::new();
    for hour in 0..744 {
        for model in models {
            for variant in variants {
                for status in statuses {
                    let values = RollupValues { requests: per_row, cost_usd: per_row as f64 * 0.001, latency_ms_sum: per_row * 800, ..RollupValues::default() };
                    let key = |bucket_start_ms| RollupKey {
                        project_id: "proj_busy".into(),
                        bucket_start_ms,
                        model: model.into(),
                        provider: "openai".into(),
                        variant: variant.into(),
                        cache_status: status.into(),
                    };
                    let start = month_start + hour * HOUR_MS;
                    hourly.insert(key(start), values.clone());
                    daily.entry(key(Granularity::Day.bucket_start(start))).or_default().add(&values);
                }
            }
        }
    }
    store.add_rollups(Granularity::Hour, &hourly).await.expect("seed hourly rollups");
    store.add_rollups(Granularity::Day, &daily).await.expect("seed daily rollups");

    let month_end = month_start + 31 * DAY_MS;
    for (granularity, group_by) in [(Granularity::Day, None), (Granularity::Day, Some(GroupBy::Model)), (Granularity::Hour, None), (Granularity::Hour, Some(GroupBy::Model))] {
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let rows = store.query_rollups("proj_busy", granularity, month_start, month_end, group_by).await.expect("query");
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            let requests: i64 = rows.iter().map(|row| row.values.requests).sum();
            assert_eq!(requests, per_row * 744 * combinations);
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!("{} busy month {granularity:?} group_by={group_by:?}: median {median:.1} ms of 5", store.kind());
        if granularity == Granularity::Day {
            assert!(median < 50.0, "daily query of a busy month took {median:.1} ms");
        }
    }
}
