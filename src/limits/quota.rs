//! Monthly quotas of a project: requests, tokens and cost in the calendar month of the project's
//! time zone, with the usage of requests in flight held as reservations.

use std::sync::Mutex;

use chrono_tz::Tz;

use super::clock::{seconds_until, Month};
use super::settings::PlanLimits;
use super::{LimitKind, Rejection};

/// Requests, tokens and cost, as counted against monthly limits.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    pub requests: i64,
    pub tokens: i64,
    pub cost_usd: f64,
}

impl Totals {
    pub fn add(&mut self, other: Totals) {
        self.requests += other.requests;
        self.tokens += other.tokens;
        self.cost_usd += other.cost_usd;
    }

    /// Subtracts `other`, stopping each figure at zero.
    pub fn remove(&mut self, other: Totals) {
        self.requests = (self.requests - other.requests).max(0);
        self.tokens = (self.tokens - other.tokens).max(0);
        self.cost_usd = (self.cost_usd - other.cost_usd).max(0.0);
    }

    /// Returns each figure as the larger of the two.
    pub fn max(self, other: Totals) -> Totals {
        Totals {
            requests: self.requests.max(other.requests),
            tokens: self.tokens.max(other.tokens),
            cost_usd: self.cost_usd.max(other.cost_usd),
        }
    }

    pub fn is_zero(&self) -> bool {
        self.requests == 0 && self.tokens == 0 && self.cost_usd == 0.0
    }
}

/// A monthly limit that an alert can report, in the order of the alert bits.
pub const ALERT_LIMITS: [LimitKind; 3] = [LimitKind::MonthlyRequests, LimitKind::MonthlyTokens, LimitKind::MonthlyCost];

/// A monthly limit crossing one of the alert thresholds.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertCandidate {
    pub project_id: String,
    pub kind: LimitKind,
    pub threshold: f64,
    pub used: f64,
    pub limit: f64,
    pub month: Month,
}

/// The monthly state of one project.
#[derive(Debug)]
pub struct ProjectState {
    pub month: Month,
    pub zone: Tz,
    /// Settled usage of the month: this node's, and other nodes' as of the last reconciliation.
    pub used: Totals,
    /// Estimates of the requests in flight on this node.
    pub reserved: Totals,
    /// Usage settled on this node since the last push to the shared totals.
    pub unsynced: Totals,
    /// Usage of the previous month not yet pushed, when the month rolled over before a push.
    pub carry: Option<(i64, Totals)>,
    /// One bit per (limit, threshold) whose alert this node has already raised this month.
    pub alerted: u64,
}

impl ProjectState {
    pub fn new(now_ms: i64, zone: Tz) -> Self {
        ProjectState {
            month: Month::containing(now_ms, zone),
            zone,
            used: Totals::default(),
            reserved: Totals::default(),
            unsynced: Totals::default(),
            carry: None,
            alerted: 0,
        }
    }

    /// Moves to the month that contains `now_ms` in `zone`; a new month starts from zero.
    pub fn roll(&mut self, now_ms: i64, zone: Tz) {
        if zone == self.zone && self.month.contains(now_ms) {
            return;
        }
        let month = Month::containing(now_ms, zone);
        if month.start_ms != self.month.start_ms {
            if !self.unsynced.is_zero() {
                self.carry = Some((self.month.start_ms, self.unsynced));
            }
            self.used = Totals::default();
            self.reserved = Totals::default();
            self.unsynced = Totals::default();
            self.alerted = 0;
        }
        self.month = month;
        self.zone = zone;
    }

    /// Checks that `estimate` fits every monthly limit beside the usage and reservations counted.
    pub fn check(&self, limits: &PlanLimits, estimate: Totals, now_ms: i64) -> Result<(), Rejection> {
        let counted = Totals {
            requests: self.used.requests + self.reserved.requests,
            tokens: self.used.tokens + self.reserved.tokens,
            cost_usd: self.used.cost_usd + self.reserved.cost_usd,
        };
        let retry_after_s = seconds_until(now_ms, self.month.end_ms);
        if limits.monthly_requests.is_some_and(|limit| counted.requests + estimate.requests > limit) {
            return Err(Rejection { kind: LimitKind::MonthlyRequests, retry_after_s });
        }
        if limits.monthly_tokens.is_some_and(|limit| counted.tokens + estimate.tokens > limit) {
            return Err(Rejection { kind: LimitKind::MonthlyTokens, retry_after_s });
        }
        if limits.monthly_cost_usd.is_some_and(|limit| counted.cost_usd + estimate.cost_usd > limit) {
            return Err(Rejection { kind: LimitKind::MonthlyCost, retry_after_s });
        }
        Ok(())
    }

    /// Replaces a reservation made in the month starting at `month_start_ms` by the actual usage.
    pub fn settle(&mut self, month_start_ms: i64, reserved: Totals, actual: Totals) {
        if month_start_ms == self.month.start_ms {
            self.reserved.remove(reserved);
            self.used.add(actual);
            self.unsynced.add(actual);
        } else if month_start_ms < self.month.start_ms && !actual.is_zero() {
            // The request began last month, where its usage event counts it too.
            let (start, mut carried) = self.carry.take().unwrap_or((month_start_ms, Totals::default()));
            if start == month_start_ms {
                carried.add(actual);
                self.carry = Some((start, carried));
            } else {
                self.carry = Some((start, carried));
            }
        }
    }

    /// Returns the alerts newly due for `thresholds` (fractions of each limit), marking them raised.
    pub fn due_alerts(&mut self, project_id: &str, limits: &PlanLimits, thresholds: &[f64]) -> Vec<AlertCandidate> {
        let mut due = Vec::new();
        let figures = [
            (limits.monthly_requests.map(|l| l as f64), self.used.requests as f64),
            (limits.monthly_tokens.map(|l| l as f64), self.used.tokens as f64),
            (limits.monthly_cost_usd, self.used.cost_usd),
        ];
        for (index, (limit, used)) in figures.into_iter().enumerate() {
            let Some(limit) = limit.filter(|l| *l > 0.0) else { continue };
            for (position, threshold) in thresholds.iter().enumerate().take(16) {
                let bit = 1u64 << (index * 16 + position);
                if self.alerted & bit == 0 && used >= threshold * limit {
                    self.alerted |= bit;
                    due.push(AlertCandidate {
                        project_id: project_id.to_string(),
                        kind: ALERT_LIMITS[index],
                        threshold: *threshold,
                        used,
                        limit,
                        month: self.month,
                    });
                }
            }
        }
        due
    }
}

/// A project's monthly state behind its lock.
#[derive(Debug)]
pub struct ProjectCounters {
    pub project_id: String,
    pub state: Mutex<ProjectState>,
}

impl ProjectCounters {
    pub fn new(project_id: &str, now_ms: i64, zone: Tz) -> Self {
        ProjectCounters { project_id: project_id.to_string(), state: Mutex::new(ProjectState::new(now_ms, zone)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PlanLimits {
        PlanLimits { monthly_requests: Some(3), monthly_tokens: Some(1000), monthly_cost_usd: Some(1.0), ..PlanLimits::default() }
    }

    fn one(tokens: i64, cost_usd: f64) -> Totals {
        Totals { requests: 1, tokens, cost_usd }
    }

    #[test]
    fn reservations_count_against_limits() {
        let mut state = ProjectState::new(0, Tz::UTC);
        state.reserved.add(one(600, 0.1));
        let rejected = state.check(&limits(), one(500, 0.1), 0).unwrap_err();
        assert_eq!(rejected.kind, LimitKind::MonthlyTokens);
        assert!(state.check(&limits(), one(400, 0.1), 0).is_ok());
    }

    #[test]
    fn settle_swaps_estimate_for_actual() {
        let mut state = ProjectState::new(0, Tz::UTC);
        let start = state.month.start_ms;
        state.reserved.add(one(600, 0.5));
        state.settle(start, one(600, 0.5), one(120, 0.01));
        assert_eq!(state.reserved, Totals::default());
        assert_eq!(state.used, one(120, 0.01));
        assert_eq!(state.unsynced, one(120, 0.01));
    }

    #[test]
    fn settle_never_goes_negative() {
        let mut state = ProjectState::new(0, Tz::UTC);
        let start = state.month.start_ms;
        state.settle(start, one(600, 0.5), Totals::default());
        assert_eq!(state.reserved, Totals::default());
        assert_eq!(state.used, Totals::default());
    }

    #[test]
    fn request_quota_rejects_at_limit() {
        let mut state = ProjectState::new(0, Tz::UTC);
        state.used = Totals { requests: 3, tokens: 0, cost_usd: 0.0 };
        let rejected = state.check(&limits(), one(1, 0.0), 0).unwrap_err();
        assert_eq!(rejected.kind, LimitKind::MonthlyRequests);
        assert_eq!(rejected.retry_after_s, seconds_until(0, state.month.end_ms));
    }

    #[test]
    fn rollover_starts_from_zero_and_carries_unsynced() {
        let mut state = ProjectState::new(0, Tz::UTC);
        let january = state.month;
        state.settle(january.start_ms, Totals::default(), one(10, 0.1));
        state.roll(january.end_ms, Tz::UTC);
        assert_eq!(state.used, Totals::default());
        assert_eq!(state.carry, Some((january.start_ms, one(10, 0.1))));
        // A request that began in January ends in February: January's carry takes it.
        state.settle(january.start_ms, one(50, 0.5), one(5, 0.05));
        assert_eq!(state.used, Totals::default());
        assert_eq!(state.carry.map(|(_, t)| t.tokens), Some(15));
    }

    #[test]
    fn alert_raised_once_per_threshold() {
        let mut state = ProjectState::new(0, Tz::UTC);
        state.used = Totals { requests: 0, tokens: 800, cost_usd: 0.0 };
        let due = state.due_alerts("p", &limits(), &[0.8, 1.0]);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].kind, LimitKind::MonthlyTokens);
        assert_eq!(due[0].threshold, 0.8);
        assert!(state.due_alerts("p", &limits(), &[0.8, 1.0]).is_empty());
        state.used.tokens = 1000;
        assert_eq!(state.due_alerts("p", &limits(), &[0.8, 1.0]).len(), 1);
    }
}
