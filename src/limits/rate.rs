//! Per-key limits: requests and tokens per minute over a sliding window, and requests in flight.

use std::sync::{Arc, Mutex, OnceLock};

use super::quota::ProjectCounters;
use super::{LimitKind, Rejection};

/// Length of the rate window.
pub const WINDOW_MS: i64 = 60_000;

/// A sliding one-minute window, estimated from the counts of the current and the previous
/// fixed minute: `previous * (1 - elapsed fraction) + current`, the estimate that
/// pingora-limits' `Rate` also offers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Window {
    /// Start of the current fixed minute.
    pub start_ms: i64,
    pub previous: i64,
    pub current: i64,
}

impl Window {
    /// Returns the start of the fixed minute that contains `now_ms`.
    pub fn bucket(now_ms: i64) -> i64 {
        now_ms - now_ms.rem_euclid(WINDOW_MS)
    }

    /// Moves the window to the minute of `now_ms`.
    pub fn advance(&mut self, now_ms: i64) {
        let bucket = Self::bucket(now_ms);
        if bucket <= self.start_ms {
            return;
        }
        self.previous = if bucket == self.start_ms + WINDOW_MS { self.current } else { 0 };
        self.current = 0;
        self.start_ms = bucket;
    }

    /// Estimates the count of the last minute at `now_ms`, without moving the window.
    pub fn estimate(&self, now_ms: i64) -> f64 {
        let bucket = Self::bucket(now_ms);
        let fraction = (now_ms - bucket) as f64 / WINDOW_MS as f64;
        if bucket == self.start_ms {
            self.previous as f64 * (1.0 - fraction) + self.current as f64
        } else if bucket == self.start_ms + WINDOW_MS {
            self.current as f64 * (1.0 - fraction)
        } else {
            0.0
        }
    }

    /// Adds `amount` to the minute starting at `bucket_ms`, if the window still contains it.
    pub fn add(&mut self, bucket_ms: i64, amount: i64) {
        if bucket_ms == self.start_ms {
            self.current = (self.current + amount).max(0);
        } else if bucket_ms == self.start_ms - WINDOW_MS {
            self.previous = (self.previous + amount).max(0);
        }
    }

    /// Returns whole seconds until `need` more fits under `limit`. The window empties within
    /// two minutes; a request larger than the limit itself gets 60.
    pub fn retry_after(&self, now_ms: i64, need: i64, limit: i64) -> u64 {
        if need > limit {
            return 60;
        }
        for seconds in 1..=120u64 {
            if self.estimate(now_ms + seconds as i64 * 1000) + need as f64 <= limit as f64 {
                return seconds;
            }
        }
        120
    }
}

/// Counters of one API key.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyState {
    pub requests: Window,
    pub tokens: Window,
    pub in_flight: i64,
}

impl KeyState {
    /// Checks concurrency, then requests and tokens per minute, for a request of `tokens`.
    pub fn check(&self, concurrency: Option<i64>, rpm: Option<i64>, tpm: Option<i64>, tokens: i64, now_ms: i64) -> Result<(), Rejection> {
        if concurrency.is_some_and(|limit| self.in_flight + 1 > limit) {
            return Err(Rejection { kind: LimitKind::Concurrency, retry_after_s: 1 });
        }
        if let Some(limit) = rpm {
            if self.requests.estimate(now_ms) + 1.0 > limit as f64 {
                return Err(Rejection { kind: LimitKind::RequestsPerMinute, retry_after_s: self.requests.retry_after(now_ms, 1, limit) });
            }
        }
        if let Some(limit) = tpm {
            if self.tokens.estimate(now_ms) + tokens as f64 > limit as f64 {
                return Err(Rejection { kind: LimitKind::TokensPerMinute, retry_after_s: self.tokens.retry_after(now_ms, tokens, limit) });
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct KeyCounters {
    pub state: Mutex<KeyState>,
    /// The counters of the key's project, found once; a key never changes its project.
    pub project: OnceLock<Arc<ProjectCounters>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_minute_fades_linearly() {
        let mut window = Window::default();
        window.advance(60_000);
        window.add(60_000, 100);
        window.advance(120_000);
        assert_eq!(window.estimate(120_000), 100.0);
        assert_eq!(window.estimate(150_000), 50.0);
        assert_eq!(window.estimate(180_000), 0.0);
    }

    #[test]
    fn settle_adjusts_the_reserving_minute() {
        let mut window = Window::default();
        window.advance(60_000);
        window.add(60_000, 50);
        window.advance(125_000);
        window.add(60_000, -30);
        assert_eq!(window.previous, 20);
        window.add(0, -1000);
        assert_eq!(window.previous, 20);
        window.add(120_000, -5);
        assert_eq!(window.current, 0);
    }

    #[test]
    fn tokens_per_minute_rejects_with_retry_after() {
        let mut state = KeyState::default();
        state.tokens.advance(0);
        state.tokens.add(0, 100);
        let rejected = state.check(None, None, Some(100), 50, 10_000).unwrap_err();
        assert_eq!(rejected.kind, LimitKind::TokensPerMinute);
        // At 90 s the previous minute's 100 tokens weigh 50, so 50 more fit.
        assert_eq!(rejected.retry_after_s, 80);
    }

    #[test]
    fn concurrency_checked_first() {
        let state = KeyState { in_flight: 2, ..KeyState::default() };
        assert_eq!(state.check(Some(2), Some(1000), None, 0, 0).unwrap_err().kind, LimitKind::Concurrency);
        assert!(state.check(Some(3), Some(1000), None, 0, 0).is_ok());
    }
}
