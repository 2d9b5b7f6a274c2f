use std::sync::{Arc, Barrier};

use super::clock::ManualClock;
use super::quota::Totals;
use super::settings::{parse_limits, LimitSettings, RawLimits};
use super::*;

fn settings(yaml: &str) -> LimitSettings {
    let raw: RawLimits = serde_yaml_ng::from_str(yaml).unwrap();
    let mut problems = Vec::new();
    let settings = parse_limits(&raw, &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    settings
}

fn utc_ms(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text).unwrap().timestamp_millis()
}

const WHO: Requester<'static> = Requester { project_id: "proj_1", project_name: "demo", plan: "pro", key_id: "key_1" };

fn tokens(count: i64) -> Totals {
    Totals { requests: 1, tokens: count, cost_usd: 0.0 }
}

#[test]
fn concurrent_requests_cannot_pass_tokens_per_minute() {
    let settings = Arc::new(settings("plans:\n  pro: {tokens_per_minute: 100}\n"));
    let limiter = Arc::new(Limiter::new(Arc::new(ManualClock::new(1_000))));
    let barrier = Arc::new(Barrier::new(5));
    let threads: Vec<_> = (0..5)
        .map(|_| {
            let (settings, limiter, barrier) = (settings.clone(), limiter.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                limiter.admit(&settings, WHO, tokens(50)).result
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut admitted: Vec<Reservation> = results.into_iter().filter_map(Result::ok).collect();
    assert_eq!(admitted.len(), 2);

    // Each used 30 of its 50 reserved tokens; the counter ends at the actual 60.
    for reservation in &mut admitted {
        reservation.settle(tokens(30), &[]);
    }
    let (_, used_tokens, in_flight) = limiter.key_snapshot("key_1").unwrap();
    assert_eq!(used_tokens, 60.0);
    assert_eq!(in_flight, 0);
}

#[test]
fn rejection_carries_code_and_retry_after() {
    let settings = settings("plans:\n  pro: {tokens_per_minute: 100}\n");
    let limiter = Limiter::new(Arc::new(ManualClock::new(0)));
    let _in_flight = limiter.admit(&settings, WHO, tokens(80)).result.unwrap();
    let rejection = limiter.admit(&settings, WHO, tokens(50)).result.unwrap_err();
    assert_eq!(rejection.kind, LimitKind::TokensPerMinute);
    assert!(rejection.retry_after_s >= 1);
    let error = rejection.to_error();
    assert_eq!(error.status.as_u16(), 429);
    assert_eq!(error.code, "rate_limit_exceeded");
}

#[test]
fn remaining_tokens_fall_as_usage_settles() {
    let settings = settings("plans:\n  pro: {monthly_tokens: 1000}\n");
    let limiter = Limiter::new(Arc::new(ManualClock::new(utc_ms("2026-03-10T00:00:00Z"))));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let admission = limiter.admit(&settings, WHO, tokens(300));
        seen.push(admission.figures.tokens.unwrap().remaining);
        admission.result.unwrap().settle(tokens(300), &[]);
    }
    assert_eq!(seen, vec![1000, 700, 400]);
}

#[test]
fn budget_follows_tokyo_month() {
    let settings = settings("plans:\n  pro: {monthly_cost_usd: 1.0}\nprojects:\n  demo: {time_zone: Asia/Tokyo}\n");
    // 23:59:30 on July 31 in Tokyo.
    let clock = Arc::new(ManualClock::new(utc_ms("2026-07-31T14:59:30Z")));
    let limiter = Limiter::new(clock.clone());
    let july = clock::Month::containing(clock.now_ms(), chrono_tz::Asia::Tokyo);
    limiter.load_month(&settings, "proj_1", "demo", "pro", july.start_ms, Totals { requests: 40, tokens: 9000, cost_usd: 1.20 });

    let request = Totals { requests: 1, tokens: 10, cost_usd: 0.01 };
    let rejection = limiter.admit(&settings, WHO, request).result.unwrap_err();
    assert_eq!(rejection.kind, LimitKind::MonthlyCost);
    assert_eq!(rejection.to_error().code, "monthly_budget_exceeded");
    assert_eq!(rejection.retry_after_s, 30);

    // 00:00:30 on August 1 in Tokyo, 15:00:30 UTC on July 31.
    clock.set(utc_ms("2026-07-31T15:00:30Z"));
    assert!(limiter.admit(&settings, WHO, request).result.is_ok());
}

#[test]
fn dropped_reservation_releases_everything() {
    let settings = settings("plans:\n  pro: {monthly_requests: 1, max_concurrent_requests: 1}\n");
    let limiter = Limiter::new(Arc::new(ManualClock::new(0)));
    let in_flight = limiter.admit(&settings, WHO, tokens(10)).result.unwrap();
    let rejection = limiter.admit(&settings, WHO, tokens(10)).result.unwrap_err();
    assert_eq!(rejection.kind, LimitKind::Concurrency);
    drop(in_flight);
    let (_, used, reserved) = limiter.project_snapshot("proj_1").unwrap();
    assert_eq!(used, Totals::default());
    assert_eq!(reserved, Totals::default());
    assert!(limiter.admit(&settings, WHO, tokens(10)).result.is_ok());
}

#[test]
fn settle_twice_counts_once() {
    let settings = settings("plans:\n  pro: {monthly_requests: 10}\n");
    let limiter = Limiter::new(Arc::new(ManualClock::new(0)));
    let mut reservation = limiter.admit(&settings, WHO, tokens(10)).result.unwrap();
    reservation.settle(tokens(7), &[]);
    reservation.settle(tokens(7), &[]);
    drop(reservation);
    let (_, used, reserved) = limiter.project_snapshot("proj_1").unwrap();
    assert_eq!(used, tokens(7));
    assert_eq!(reserved, Totals::default());
}

#[test]
fn monthly_requests_reject_until_month_end() {
    let settings = settings("plans:\n  pro: {monthly_requests: 2}\n");
    let clock = Arc::new(ManualClock::new(utc_ms("2026-02-28T23:59:00Z")));
    let limiter = Limiter::new(clock.clone());
    for _ in 0..2 {
        let admission = limiter.admit(&settings, WHO, tokens(1));
        admission.result.unwrap().settle(tokens(1), &[]);
    }
    let admission = limiter.admit(&settings, WHO, tokens(1));
    assert_eq!(admission.figures.requests.unwrap().remaining, 0);
    let rejection = admission.result.unwrap_err();
    assert_eq!(rejection.kind, LimitKind::MonthlyRequests);
    assert_eq!(rejection.retry_after_s, 60);
}

#[test]
fn shared_totals_replace_local_view() {
    let settings = settings("plans:\n  pro: {monthly_requests: 10}\n");
    let limiter = Limiter::new(Arc::new(ManualClock::new(0)));
    let mut reservation = limiter.admit(&settings, WHO, tokens(1)).result.unwrap();
    reservation.settle(tokens(5), &[]);
    let pushed = limiter.take_unsynced();
    assert_eq!(pushed.len(), 1);
    assert!(limiter.take_unsynced().is_empty());

    // Another node pushed 7 requests; this node settles one more before the read.
    let mut reservation = limiter.admit(&settings, WHO, tokens(1)).result.unwrap();
    reservation.settle(tokens(2), &[]);
    let month_start = pushed[0].1;
    let alerts = limiter.apply_shared(&settings, &[0.8], ("proj_1", "demo", "pro"), month_start, Totals { requests: 8, tokens: 50, cost_usd: 0.0 });
    let (_, used, _) = limiter.project_snapshot("proj_1").unwrap();
    assert_eq!(used.requests, 9);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, LimitKind::MonthlyRequests);
}
