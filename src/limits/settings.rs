//! The `limits` section of the config file: plans, per-project overrides and IP limits, as
//! written (`Raw*`) and validated (`LimitSettings`). Every value reloads live.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ahash::RandomState;
use chrono_tz::Tz;
use ipnet::IpNet;
use serde::Deserialize;

/// Plan names a config without a `plans` section offers, each without limits.
pub const DEFAULT_PLANS: [&str; 3] = ["free", "pro", "enterprise"];

/// Limits of a plan, or a project's overrides of its plan. A missing value means no limit.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawPlan {
    /// Requests per calendar month.
    pub monthly_requests: Option<i64>,
    /// Total (prompt and completion) tokens per calendar month.
    pub monthly_tokens: Option<i64>,
    /// Cost in USD per calendar month.
    pub monthly_cost_usd: Option<f64>,
    /// Requests per minute for each API key of the project.
    pub requests_per_minute: Option<i64>,
    /// Tokens per minute for each API key of the project.
    pub tokens_per_minute: Option<i64>,
    /// Requests in flight at once for each API key of the project.
    pub max_concurrent_requests: Option<i64>,
}

/// A project's overrides, keyed by project name or id in `limits.projects`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProjectLimits {
    /// IANA time zone whose calendar months the project's monthly limits follow.
    pub time_zone: Option<String>,
    pub monthly_requests: Option<i64>,
    pub monthly_tokens: Option<i64>,
    pub monthly_cost_usd: Option<f64>,
    pub requests_per_minute: Option<i64>,
    pub tokens_per_minute: Option<i64>,
    pub max_concurrent_requests: Option<i64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIpLimits {
    pub enabled: bool,
    /// Sustained requests per second from one client address (an IPv6 client counts by its /64).
    pub requests_per_second: u32,
    /// Requests one address may send within any second.
    pub burst: u32,
    /// Failed authentications per minute from one address before it is blocked.
    pub failed_auth_per_minute: u32,
    /// Peers whose `X-Forwarded-For` header is trusted, as addresses or CIDR networks.
    pub trusted_proxies: Vec<String>,
    /// Networks never limited by address.
    pub allow: Vec<String>,
}

impl Default for RawIpLimits {
    fn default() -> Self {
        RawIpLimits {
            enabled: true,
            requests_per_second: 50,
            burst: 100,
            failed_auth_per_minute: 20,
            trusted_proxies: Vec::new(),
            allow: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Time zone of every project without its own `time_zone`.
    pub time_zone: String,
    /// Completion tokens reserved for a request that sets no `max_tokens`.
    pub default_max_tokens: i64,
    /// How often a node reconciles its counters with the totals in PostgreSQL, in milliseconds;
    /// 0 turns reconciliation off.
    pub sync_interval_ms: u64,
    pub plans: BTreeMap<String, RawPlan>,
    pub projects: BTreeMap<String, RawProjectLimits>,
    pub ip: RawIpLimits,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            time_zone: "UTC".into(),
            default_max_tokens: 1024,
            sync_interval_ms: 1000,
            plans: DEFAULT_PLANS.iter().map(|name| (name.to_string(), RawPlan::default())).collect(),
            projects: BTreeMap::new(),
            ip: RawIpLimits::default(),
        }
    }
}

/// The limits that apply to one project after its overrides.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PlanLimits {
    pub monthly_requests: Option<i64>,
    pub monthly_tokens: Option<i64>,
    pub monthly_cost_usd: Option<f64>,
    pub requests_per_minute: Option<i64>,
    pub tokens_per_minute: Option<i64>,
    pub max_concurrent_requests: Option<i64>,
}

impl PlanLimits {
    fn from_raw(raw: &RawPlan) -> Self {
        PlanLimits {
            monthly_requests: raw.monthly_requests,
            monthly_tokens: raw.monthly_tokens,
            monthly_cost_usd: raw.monthly_cost_usd,
            requests_per_minute: raw.requests_per_minute,
            tokens_per_minute: raw.tokens_per_minute,
            max_concurrent_requests: raw.max_concurrent_requests,
        }
    }

    /// Whether no monthly limit is set, so that the project needs no monthly counters.
    pub fn has_monthly(&self) -> bool {
        self.monthly_requests.is_some() || self.monthly_tokens.is_some() || self.monthly_cost_usd.is_some()
    }
}

#[derive(Clone, Debug, Default)]
pub struct ProjectOverride {
    pub time_zone: Option<Tz>,
    pub limits: RawPlan,
}

#[derive(Clone, Debug)]
pub struct IpSettings {
    pub enabled: bool,
    pub requests_per_second: u32,
    pub burst: u32,
    pub failed_auth_per_minute: u32,
    pub trusted_proxies: Vec<IpNet>,
    pub allow: Vec<IpNet>,
}

/// The validated `limits` section.
#[derive(Clone, Debug)]
pub struct LimitSettings {
    pub time_zone: Tz,
    pub default_max_tokens: i64,
    pub sync_interval: Duration,
    pub plans: HashMap<String, PlanLimits, RandomState>,
    pub projects: HashMap<String, ProjectOverride, RandomState>,
    pub ip: IpSettings,
}

impl Default for LimitSettings {
    fn default() -> Self {
        let mut problems = Vec::new();
        parse_limits(&RawLimits::default(), &mut problems)
    }
}

/// The limits and time zone of one project.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResolvedLimits {
    pub limits: PlanLimits,
    pub time_zone: Tz,
    /// False when the project's plan is not configured; it then has no plan limits.
    pub known_plan: bool,
}

impl LimitSettings {
    /// Returns the limits of a project: its plan's, with the overrides configured under its id
    /// or, failing that, its name.
    pub fn resolve(&self, project_id: &str, project_name: &str, plan: &str) -> ResolvedLimits {
        let base = self.plans.get(plan);
        let mut limits = base.copied().unwrap_or_default();
        let mut time_zone = self.time_zone;
        if let Some(found) = self.projects.get(project_id).or_else(|| self.projects.get(project_name)) {
            let raw = &found.limits;
            limits.monthly_requests = raw.monthly_requests.or(limits.monthly_requests);
            limits.monthly_tokens = raw.monthly_tokens.or(limits.monthly_tokens);
            limits.monthly_cost_usd = raw.monthly_cost_usd.or(limits.monthly_cost_usd);
            limits.requests_per_minute = raw.requests_per_minute.or(limits.requests_per_minute);
            limits.tokens_per_minute = raw.tokens_per_minute.or(limits.tokens_per_minute);
            limits.max_concurrent_requests = raw.max_concurrent_requests.or(limits.max_concurrent_requests);
            time_zone = found.time_zone.unwrap_or(time_zone);
        }
        ResolvedLimits { limits, time_zone, known_plan: base.is_some() }
    }

    /// Returns the configured plan names in sorted order.
    pub fn plan_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.plans.keys().cloned().collect();
        names.sort();
        names
    }
}

/// Validates the `limits` section; each problem is pushed as (dotted path, message).
pub fn parse_limits(raw: &RawLimits, problems: &mut Vec<(String, String)>) -> LimitSettings {
    let time_zone = parse_zone("limits.time_zone", &raw.time_zone, problems).unwrap_or(Tz::UTC);
    if raw.default_max_tokens < 0 {
        problems.push(("limits.default_max_tokens".into(), "must not be negative".into()));
    }

    let mut plans = HashMap::default();
    for (name, plan) in &raw.plans {
        check_plan(&format!("limits.plans.{name}"), plan, problems);
        plans.insert(name.clone(), PlanLimits::from_raw(plan));
    }

    let mut projects = HashMap::default();
    for (name, project) in &raw.projects {
        let path = format!("limits.projects.{name}");
        let limits = RawPlan {
            monthly_requests: project.monthly_requests,
            monthly_tokens: project.monthly_tokens,
            monthly_cost_usd: project.monthly_cost_usd,
            requests_per_minute: project.requests_per_minute,
            tokens_per_minute: project.tokens_per_minute,
            max_concurrent_requests: project.max_concurrent_requests,
        };
        check_plan(&path, &limits, problems);
        let time_zone = project.time_zone.as_ref().and_then(|zone| parse_zone(&format!("{path}.time_zone"), zone, problems));
        projects.insert(name.clone(), ProjectOverride { time_zone, limits });
    }

    let ip = &raw.ip;
    if ip.enabled && (ip.requests_per_second == 0 || ip.burst < ip.requests_per_second) {
        problems.push(("limits.ip".into(), "requests_per_second must be at least 1 and burst at least requests_per_second".into()));
    }
    LimitSettings {
        time_zone,
        default_max_tokens: raw.default_max_tokens.max(0),
        sync_interval: Duration::from_millis(raw.sync_interval_ms),
        plans,
        projects,
        ip: IpSettings {
            enabled: ip.enabled,
            requests_per_second: ip.requests_per_second,
            burst: ip.burst,
            failed_auth_per_minute: ip.failed_auth_per_minute,
            trusted_proxies: parse_networks("limits.ip.trusted_proxies", &ip.trusted_proxies, problems),
            allow: parse_networks("limits.ip.allow", &ip.allow, problems),
        },
    }
}

fn parse_zone(path: &str, name: &str, problems: &mut Vec<(String, String)>) -> Option<Tz> {
    match name.parse::<Tz>() {
        Ok(zone) => Some(zone),
        Err(_) => {
            problems.push((path.into(), format!("unknown time zone {name:?}; use an IANA name such as UTC or Asia/Tokyo")));
            None
        }
    }
}

fn check_plan(path: &str, plan: &RawPlan, problems: &mut Vec<(String, String)>) {
    let integers = [
        ("monthly_requests", plan.monthly_requests),
        ("monthly_tokens", plan.monthly_tokens),
        ("requests_per_minute", plan.requests_per_minute),
        ("tokens_per_minute", plan.tokens_per_minute),
        ("max_concurrent_requests", plan.max_concurrent_requests),
    ];
    for (field, value) in integers {
        if value.is_some_and(|v| v < 0) {
            problems.push((format!("{path}.{field}"), "must not be negative".into()));
        }
    }
    if plan.monthly_cost_usd.is_some_and(|v| !v.is_finite() || v < 0.0) {
        problems.push((format!("{path}.monthly_cost_usd"), "must be a number of at least 0".into()));
    }
}

/// Parses addresses and CIDR networks; a bare address becomes a /32 or /128 network.
fn parse_networks(path: &str, values: &[String], problems: &mut Vec<(String, String)>) -> Vec<IpNet> {
    let mut networks = Vec::new();
    for (index, value) in values.iter().enumerate() {
        let parsed = value.parse::<IpNet>().or_else(|_| value.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(network) => networks.push(network.trunc()),
            Err(_) => problems.push((format!("{path}[{index}]"), format!("invalid address or network {value:?}; expected such as 10.0.0.0/8"))),
        }
    }
    networks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> (LimitSettings, Vec<(String, String)>) {
        let raw: RawLimits = serde_yaml_ng::from_str(yaml).unwrap();
        let mut problems = Vec::new();
        let settings = parse_limits(&raw, &mut problems);
        (settings, problems)
    }

    #[test]
    fn default_plans_have_no_limits() {
        let (settings, problems) = parse("{}");
        assert!(problems.is_empty());
        assert_eq!(settings.plan_names(), vec!["enterprise", "free", "pro"]);
        assert_eq!(settings.resolve("p", "n", "pro").limits, PlanLimits::default());
    }

    #[test]
    fn override_by_name_replaces_plan_value() {
        let (settings, problems) = parse(
            "plans:\n  pro: {monthly_requests: 100, tokens_per_minute: 1000}\nprojects:\n  demo: {monthly_requests: 5, time_zone: Asia/Tokyo}\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let resolved = settings.resolve("proj_1", "demo", "pro");
        assert_eq!(resolved.limits.monthly_requests, Some(5));
        assert_eq!(resolved.limits.tokens_per_minute, Some(1000));
        assert_eq!(resolved.time_zone, chrono_tz::Asia::Tokyo);
        assert!(resolved.known_plan);
        assert!(!settings.resolve("proj_2", "other", "gold").known_plan);
    }

    #[test]
    fn invalid_values_reported_with_paths() {
        let (_, problems) = parse(
            "time_zone: Mars/Olympus\nplans:\n  free: {monthly_tokens: -1}\nip:\n  trusted_proxies: [not-an-ip]\n",
        );
        let paths: Vec<&str> = problems.iter().map(|(path, _)| path.as_str()).collect();
        assert!(paths.contains(&"limits.time_zone"), "{paths:?}");
        assert!(paths.contains(&"limits.plans.free.monthly_tokens"), "{paths:?}");
        assert!(paths.contains(&"limits.ip.trusted_proxies[0]"), "{paths:?}");
    }
}
