//! Quotas and rate limits, checked in `request_filter` before any upstream work.
//!
//! - `settings`: plans, per-project overrides and IP limits from the config.
//! - `clock`: the injectable time source and calendar months in a time zone.
//! - `quota`: a project's monthly requests, tokens and cost, with reservations.
//! - `rate`: per-key requests and tokens per minute, and requests in flight.
//! - `reservation`: the estimate an admitted request keeps reserved until it is settled.
//! - `ip`: limits by client address, in front of authentication.
//! - `sync`: rebuilding the counters from the stored usage events, and reconciling them across
//!   nodes through shared totals in the database.

pub mod clock;
pub mod headers;
pub mod ip;
pub mod quota;
pub mod rate;
pub mod reservation;
pub mod service;
pub mod settings;
mod shards;
pub mod sync;

use std::sync::Arc;

use http::StatusCode;

use crate::error::{ErrorSource, GatewayError};
use clock::{Clock, SystemClock};
use quota::{AlertCandidate, ProjectCounters, Totals};
use rate::{KeyCounters, Window};
pub use reservation::Reservation;
use settings::{LimitSettings, ResolvedLimits};

/// A limit a request can exceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKind {
    MonthlyRequests,
    MonthlyTokens,
    MonthlyCost,
    RequestsPerMinute,
    TokensPerMinute,
    Concurrency,
}

impl LimitKind {
    /// The OpenAI-style error code of a rejection by this limit.
    pub fn code(self) -> &'static str {
        match self {
            LimitKind::MonthlyRequests => "monthly_request_quota_exceeded",
            LimitKind::MonthlyTokens => "monthly_token_quota_exceeded",
            LimitKind::MonthlyCost => "monthly_budget_exceeded",
            LimitKind::RequestsPerMinute | LimitKind::TokensPerMinute => "rate_limit_exceeded",
            LimitKind::Concurrency => "concurrency_limit_exceeded",
        }
    }

    /// The config key of the limit, also its name in alerts.
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::MonthlyRequests => "monthly_requests",
            LimitKind::MonthlyTokens => "monthly_tokens",
            LimitKind::MonthlyCost => "monthly_cost_usd",
            LimitKind::RequestsPerMinute => "requests_per_minute",
            LimitKind::TokensPerMinute => "tokens_per_minute",
            LimitKind::Concurrency => "max_concurrent_requests",
        }
    }
}

/// A request over a limit, and when it may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub kind: LimitKind,
    /// Whole seconds until the limit frees enough for the request, at least 1.
    pub retry_after_s: u64,
}

impl Rejection {
    /// Returns the 429 response the client gets.
    pub fn to_error(self) -> GatewayError {
        let what = match self.kind {
            LimitKind::MonthlyRequests => "the project's monthly request quota",
            LimitKind::MonthlyTokens => "the project's monthly token quota",
            LimitKind::MonthlyCost => "the project's monthly budget",
            LimitKind::RequestsPerMinute => "the key's requests per minute",
            LimitKind::TokensPerMinute => "the key's tokens per minute",
            LimitKind::Concurrency => "the key's limit of concurrent requests",
        };
        GatewayError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            code: self.kind.code(),
            message: format!("Request exceeds {what} ({}). Retry after {} seconds.", self.kind.name(), self.retry_after_s),
            source: ErrorSource::Client,
        }
    }
}

/// Who is asking, as admission needs it.
#[derive(Clone, Copy, Debug)]
pub struct Requester<'a> {
    pub project_id: &'a str,
    pub project_name: &'a str,
    pub plan: &'a str,
    pub key_id: &'a str,
}

/// The figures reported in the `x-ratelimit-*` headers; see [`headers`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    pub requests: Option<Figure>,
    pub tokens: Option<Figure>,
}

/// One limit, what remained of it at admission, and seconds until it resets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figure {
    pub limit: i64,
    pub remaining: i64,
    pub reset_s: u64,
}

/// The outcome of admission.
#[derive(Debug)]
pub struct Admission {
    pub result: Result<Reservation, Rejection>,
    pub figures: Figures,
}

/// The in-memory counters of every project and key.
pub struct Limiter {
    clock: Arc<dyn Clock>,
    projects: shards::ShardedMap<ProjectCounters>,
    keys: shards::ShardedMap<KeyCounters>,
    pub ip: ip::IpLimiter,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new(Arc::new(SystemClock))
    }
}

impl Limiter {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Limiter { clock, projects: Default::default(), keys: Default::default(), ip: ip::IpLimiter::new() }
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Returns the counters of a project, created for the month of `zone` when missing.
    fn project(&self, project_id: &str, zone: chrono_tz::Tz) -> Arc<ProjectCounters> {
        self.projects.get_or_insert_with(project_id, || ProjectCounters::new(project_id, self.now_ms(), zone))
    }

    fn key(&self, key_id: &str) -> Arc<KeyCounters> {
        self.keys.get_or_insert_with(key_id, KeyCounters::default)
    }

    /// Checks every limit of the requester for a request of `estimate` and, when all pass,
    /// reserves the estimate in every counter at once.
    pub fn admit(&self, settings: &LimitSettings, who: Requester<'_>, estimate: Totals) -> Admission {
        let resolved = settings.resolve(who.project_id, who.project_name, who.plan);
        let limits = resolved.limits;
        let now_ms = self.now_ms();
        let mut figures = Figures::default();
        let mut reservation = Reservation {
            project: None,
            key: None,
            limits,
            month_start_ms: 0,
            minute_ms: Window::bucket(now_ms),
            reserved: estimate,
            holds_slot: limits.max_concurrent_requests.is_some(),
            settled: true,
        };

        // One lookup finds the key's counters and, through them, its project's.
        let key_counters = self.key(who.key_id);
        let key_limited = limits.requests_per_minute.is_some() || limits.tokens_per_minute.is_some() || limits.max_concurrent_requests.is_some();
        let key = key_limited.then(|| key_counters.clone());
        let mut key_state = match &key {
            Some(counters) => Some(counters.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())),
            None => None,
        };
        // Usage is counted for every project, so that a monthly limit added by a reload starts
        // from the month's true usage.
        let project = Some(key_counters.project.get_or_init(|| self.project(who.project_id, resolved.time_zone)).clone());
        let mut project_state = match &project {
            Some(counters) => Some(counters.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())),
            None => None,
        };

        let mut checked = Ok(());
        if let Some(state) = key_state.as_mut() {
            state.requests.advance(now_ms);
            state.tokens.advance(now_ms);
            figures = key_figures(state, &limits, now_ms);
            checked = state.check(limits.max_concurrent_requests, limits.requests_per_minute, limits.tokens_per_minute, estimate.tokens, now_ms);
        }
        if let Some(state) = project_state.as_mut() {
            state.roll(now_ms, resolved.time_zone);
            monthly_figures(state, &resolved, now_ms, &mut figures);
            if checked.is_ok() {
                checked = state.check(&limits, estimate, now_ms);
            }
        }
        if let Err(rejection) = checked {
            return Admission { result: Err(rejection), figures };
        }

        if let Some(state) = key_state.as_mut() {
            // Both windows were advanced to this minute above.
            state.requests.add(reservation.minute_ms, 1);
            state.tokens.add(reservation.minute_ms, estimate.tokens);
            if reservation.holds_slot {
                state.in_flight += 1;
            }
        }
        if let Some(state) = project_state.as_mut() {
            state.reserved.add(estimate);
            reservation.month_start_ms = state.month.start_ms;
        }
        drop(key_state);
        drop(project_state);
        reservation.key = key;
        reservation.project = project;
        reservation.settled = false;
        // The request counts against the remaining requests; its tokens are not known yet.
        if let Some(figure) = figures.requests.as_mut() {
            figure.remaining = (figure.remaining - 1).max(0);
        }
        Admission { result: Ok(reservation), figures }
    }

    /// Sets a project's usage of its current month, as rebuilt from the stored usage events;
    /// each figure keeps the larger of the two values.
    pub fn load_month(&self, settings: &LimitSettings, project_id: &str, project_name: &str, plan: &str, month_start_ms: i64, used: Totals) {
        let resolved = settings.resolve(project_id, project_name, plan);
        let counters = self.project(project_id, resolved.time_zone);
        let mut state = counters.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.roll(self.now_ms(), resolved.time_zone);
        if state.month.start_ms == month_start_ms {
            state.used = state.used.max(used);
        }
    }

    /// Takes the usage settled since the last push of every project, as
    /// (project, month start, usage).
    pub fn take_unsynced(&self) -> Vec<(String, i64, Totals)> {
        let mut taken = Vec::new();
        self.projects.for_each(|counters| {
            let project_id = &counters.project_id;
            let mut state = counters.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((start, carried)) = state.carry.take() {
                taken.push((project_id.clone(), start, carried));
            }
            if !state.unsynced.is_zero() {
                taken.push((project_id.clone(), state.month.start_ms, state.unsynced));
                state.unsynced = Totals::default();
            }
        });
        taken
    }

    /// Puts back usage whose push failed, so that the next push sends it.
    pub fn restore_unsynced(&self, project_id: &str, month_start_ms: i64, usage: Totals) {
        let Some(counters) = self.projects.get(project_id) else { return };
        let mut state = counters.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.month.start_ms == month_start_ms {
            state.unsynced.add(usage);
        }
    }

    /// Applies the shared total of a project's month: every node's pushed usage, plus what this
    /// node settled since its last push. Returns the alerts now due.
    pub fn apply_shared(&self, settings: &LimitSettings, thresholds: &[f64], project: (&str, &str, &str), month_start_ms: i64, shared: Totals) -> Vec<AlertCandidate> {
        let (project_id, project_name, plan) = project;
        let resolved = settings.resolve(project_id, project_name, plan);
        let counters = self.project(project_id, resolved.time_zone);
        let mut state = counters.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.roll(self.now_ms(), resolved.time_zone);
        if state.month.start_ms != month_start_ms {
            return Vec::new();
        }
        let mut used = shared;
        used.add(state.unsynced);
        state.used = used;
        state.due_alerts(project_id, &resolved.limits, thresholds)
    }

    /// Returns a project's month, usage and reservations, for the admin API.
    pub fn project_snapshot(&self, project_id: &str) -> Option<(clock::Month, Totals, Totals)> {
        let counters = self.projects.get(project_id)?;
        let state = counters.state.lock().ok()?;
        Some((state.month, state.used, state.reserved))
    }

    /// Returns a key's estimated requests and tokens of the last minute and its requests in flight.
    pub fn key_snapshot(&self, key_id: &str) -> Option<(f64, f64, i64)> {
        let counters = self.keys.get(key_id)?;
        let state = counters.state.lock().ok()?;
        let now_ms = self.now_ms();
        Some((state.requests.estimate(now_ms), state.tokens.estimate(now_ms), state.in_flight))
    }
}

fn key_figures(state: &rate::KeyState, limits: &settings::PlanLimits, now_ms: i64) -> Figures {
    let reset_s = clock::seconds_until(now_ms, Window::bucket(now_ms) + rate::WINDOW_MS);
    let figure = |limit: i64, window: &Window| Figure { limit, remaining: (limit as f64 - window.estimate(now_ms)).floor().max(0.0) as i64, reset_s };
    Figures {
        requests: limits.requests_per_minute.map(|limit| figure(limit, &state.requests)),
        tokens: limits.tokens_per_minute.map(|limit| figure(limit, &state.tokens)),
    }
}

/// Fills the figures that per-minute limits left empty with the monthly ones.
fn monthly_figures(state: &quota::ProjectState, resolved: &ResolvedLimits, now_ms: i64, figures: &mut Figures) {
    let reset_s = clock::seconds_until(now_ms, state.month.end_ms);
    let counted_requests = state.used.requests + state.reserved.requests;
    let counted_tokens = state.used.tokens + state.reserved.tokens;
    if figures.requests.is_none() {
        figures.requests = resolved.limits.monthly_requests.map(|limit| Figure { limit, remaining: (limit - counted_requests).max(0), reset_s });
    }
    if figures.tokens.is_none() {
        figures.tokens = resolved.limits.monthly_tokens.map(|limit| Figure { limit, remaining: (limit - counted_tokens).max(0), reset_s });
    }
}

#[cfg(test)]
mod tests;
