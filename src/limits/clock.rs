//! The time source of the limits, and calendar months in a project's time zone.
//!
//! Every limit reads the time through [`Clock`], so tests move a [`ManualClock`] across a month
//! boundary instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{Datelike, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// A source of the current time in milliseconds since the Unix epoch (UTC).
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis()
    }
}

/// A clock that moves only when `set` or `advance` is called, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        ManualClock(AtomicI64::new(now_ms))
    }

    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, by_ms: i64) {
        self.0.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// One calendar month in a time zone, as the half-open range `[start_ms, end_ms)` in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Month {
    pub year: i32,
    pub month: u32,
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Month {
    /// Returns the month that contains `now_ms` in `zone`.
    pub fn containing(now_ms: i64, zone: Tz) -> Month {
        let local = Utc.timestamp_millis_opt(now_ms).single().unwrap_or_default().with_timezone(&zone);
        let (year, month) = (local.year(), local.month());
        let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
        Month { year, month, start_ms: local_midnight_ms(zone, year, month), end_ms: local_midnight_ms(zone, next_year, next_month) }
    }

    /// Returns `YYYY-MM`, the label of the month in alerts and the store.
    pub fn label(&self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }

    pub fn contains(&self, now_ms: i64) -> bool {
        self.start_ms <= now_ms && now_ms < self.end_ms
    }
}

/// Returns the instant of local midnight starting day 1 of `month`. Where a time-zone change
/// skips midnight, the month starts at the first local time that exists after it.
fn local_midnight_ms(zone: Tz, year: i32, month: u32) -> i64 {
    let Some(date) = NaiveDate::from_ymd_opt(year, month, 1) else { return i64::MAX };
    local_day_start_ms(zone, date)
}

/// Returns the instant at which `date` starts in `zone`: local midnight, or where a time-zone
/// change skips midnight, the first full local hour that exists after it.
pub fn local_day_start_ms(zone: Tz, date: NaiveDate) -> i64 {
    for hour in 0..4 {
        let Some(naive) = date.and_hms_opt(hour, 0, 0) else { continue };
        match zone.from_local_datetime(&naive) {
            LocalResult::Single(at) => return at.timestamp_millis(),
            LocalResult::Ambiguous(earliest, _) => return earliest.timestamp_millis(),
            LocalResult::None => continue,
        }
    }
    // No zone skips four hours; fall back to UTC midnight.
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default()).timestamp_millis()
}

/// Returns the calendar date in `zone` of the instant `ms`.
pub fn local_date(ms: i64, zone: Tz) -> NaiveDate {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default().with_timezone(&zone).date_naive()
}

/// Whole seconds from `now_ms` until `until_ms`, at least 1, as `Retry-After` states them.
pub fn seconds_until(now_ms: i64, until_ms: i64) -> u64 {
    let ms = (until_ms - now_ms).max(0) as u64;
    ms.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc_ms(text: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(text).unwrap().timestamp_millis()
    }

    #[test]
    fn tokyo_month_starts_at_1500_utc() {
        let tokyo: Tz = "Asia/Tokyo".parse().unwrap();
        let july = Month::containing(utc_ms("2026-07-31T14:59:30Z"), tokyo);
        assert_eq!(july.label(), "2026-07");
        assert_eq!(july.end_ms, utc_ms("2026-07-31T15:00:00Z"));
        let august = Month::containing(utc_ms("2026-07-31T15:00:30Z"), tokyo);
        assert_eq!(august.label(), "2026-08");
        assert_eq!(august.start_ms, july.end_ms);
    }

    #[test]
    fn december_rolls_into_next_year() {
        let month = Month::containing(utc_ms("2026-12-15T00:00:00Z"), Tz::UTC);
        assert_eq!(month.label(), "2026-12");
        assert_eq!(month.end_ms, utc_ms("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn dst_zone_month_uses_local_midnight() {
        let new_york: Tz = "America/New_York".parse().unwrap();
        let month = Month::containing(utc_ms("2026-04-10T12:00:00Z"), new_york);
        // EDT is UTC-4 on April 1 and May 1.
        assert_eq!(month.start_ms, utc_ms("2026-04-01T04:00:00Z"));
        assert_eq!(month.end_ms, utc_ms("2026-05-01T04:00:00Z"));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(seconds_until(0, 30_000), 30);
        assert_eq!(seconds_until(0, 30_001), 31);
        assert_eq!(seconds_until(10, 0), 1);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(5);
        assert_eq!(clock.now_ms(), 5);
        clock.advance(10);
        assert_eq!(clock.now_ms(), 15);
        clock.set(1);
        assert_eq!(clock.now_ms(), 1);
    }
}
