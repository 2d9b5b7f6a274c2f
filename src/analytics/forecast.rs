//! Daily spend forecasts: additive Holt-Winters with a damped trend and weekly seasonality when
//! at least 7 full days of history exist, the mean of the days under 7 days, and today's run
//! rate without any full day. Each forecast comes with the variance of a weighted sum of the
//! forecast days, which gives the prediction interval of the month-end spend.

use serde::Serialize;

/// Season length in days.
pub const SEASON: usize = 7;
/// Two-sided 80% quantile of the standard normal distribution (z for p = 0.9).
pub const Z_80: f64 = 1.281_551_565_544_600_4;

/// Forecasting method, reported by the forecast API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Additive Holt-Winters, damped trend, weekly seasonality; 7 or more full days.
    HoltWintersWeekly,
    /// Mean of the full days, 1 to 6 of them.
    DailyMean,
    /// Today's spend extrapolated to a full day; no full day of history.
    RunRate,
}

/// Forecasts of the next `horizon` days after the history.
#[derive(Clone, Debug)]
pub struct SeriesForecast {
    pub method: Method,
    /// Mean forecast per day, day 1 first; never negative.
    pub means: Vec<f64>,
    /// Standard deviation of the one-day-ahead error.
    pub sigma: f64,
    /// Coefficients c_1.. of past errors in later days (the error-correction form of the model):
    /// the error of day h is e_h + sum over j of c_j * e_(h-j).
    pub carry: Vec<f64>,
    /// Variance of the mean estimate shared by every day (the mean methods), else 0.
    pub shared_variance: f64,
}

impl SeriesForecast {
    /// Returns the standard deviation of day `h`'s forecast error (h starts at 1).
    pub fn day_sd(&self, h: usize) -> f64 {
        let carried: f64 = self.carry.iter().take(h.saturating_sub(1)).map(|c| c * c).sum();
        (self.sigma * self.sigma * (1.0 + carried) + self.shared_variance).sqrt()
    }

    /// Returns the mean and standard deviation of sum(weights[h-1] * day h) over the horizon.
    pub fn weighted_total(&self, weights: &[f64]) -> (f64, f64) {
        let mean = weights.iter().zip(&self.means).map(|(w, m)| w * m).sum();
        let mut variance = 0.0;
        for k in 0..weights.len() {
            // Coefficient of the error of day k+1 in the weighted total.
            let mut coefficient = weights[k];
            for h in (k + 1)..weights.len() {
                coefficient += weights[h] * self.carry.get(h - k - 1).copied().unwrap_or(0.0);
            }
            variance += coefficient * coefficient;
        }
        variance *= self.sigma * self.sigma;
        let weight_sum: f64 = weights.iter().sum();
        variance += weight_sum * weight_sum * self.shared_variance;
        (mean, variance.sqrt())
    }
}

/// Forecasts `horizon` days after `history` (full days, oldest first, day after day).
/// `today_run_rate` is today's spend scaled to a full day, used only without history.
pub fn forecast(history: &[f64], horizon: usize, today_run_rate: f64) -> SeriesForecast {
    if history.len() >= SEASON {
        return holt_winters(&clip_outliers(history), horizon);
    }
    if history.is_empty() {
        let rate = today_run_rate.max(0.0);
        // Without any full day the spread is unknown, so the interval assumes a coefficient of
        // variation of 1.
        return SeriesForecast { method: Method::RunRate, means: vec![rate; horizon], sigma: rate, carry: Vec::new(), shared_variance: 0.0 };
    }

    let n = history.len() as f64;
    let mean = history.iter().sum::<f64>() / n;
    let sigma = if history.len() >= 2 {
        (history.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        // One day cannot show the spread, so the standard deviation is taken as half the mean.
        0.5 * mean
    };
    SeriesForecast {
        method: Method::DailyMean,
        means: vec![mean.max(0.0); horizon],
        sigma,
        carry: Vec::new(),
        shared_variance: sigma * sigma / n,
    }
}

/// Same-weekday neighbors, each side, that an outlier test compares a day with.
const NEIGHBOR_WEEKS: usize = 3;
/// Deviations beyond this many robust standard deviations count as outliers.
const OUTLIER_LIMIT: f64 = 5.0;

/// Returns the median, or 0 for no values.
fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

/// Returns the history with one-off spikes and dips pulled back toward the median of the same
/// weekday in the three weeks before and after, so that a single unusual day does not move
/// the level or the seasonal pattern. A day counts as an outlier when it deviates from that
/// median by more than 5 robust standard deviations (1.4826 times the median absolute
/// deviation, and at least 5% of the median day). Needs two weeks; shorter histories stay.
fn clip_outliers(history: &[f64]) -> Vec<f64> {
    if history.len() < 2 * SEASON {
        return history.to_vec();
    }
    let references: Vec<f64> = (0..history.len())
        .map(|day| {
            let mut neighbors: Vec<f64> = (1..=NEIGHBOR_WEEKS)
                .flat_map(|weeks| [day.checked_sub(weeks * SEASON), Some(day + weeks * SEASON)])
                .flatten()
                .filter_map(|index| history.get(index).copied())
                .collect();
            median(&mut neighbors)
        })
        .collect();
    let mut deviations: Vec<f64> = history.iter().zip(&references).map(|(y, r)| (y - r).abs()).collect();
    let typical_day = median(&mut history.to_vec());
    let scale = (1.4826 * median(&mut deviations)).max(0.05 * typical_day);
    let limit = OUTLIER_LIMIT * scale;
    history
        .iter()
        .zip(&references)
        .map(|(&y, &reference)| y.clamp(reference - limit, reference + limit))
        .collect()
}

/// Smoothing parameters of one Holt-Winters fit.
#[derive(Clone, Copy, Debug)]
struct Parameters {
    alpha: f64,
    beta: f64,
    gamma: f64,
    phi: f64,
}

/// State after running the model over the history.
struct Fit {
    level: f64,
    trend: f64,
    seasonals: [f64; SEASON],
    squared_error_sum: f64,
    errors: usize,
}

fn run(history: &[f64], p: Parameters) -> Fit {
    let first_season = &history[..SEASON];
    let level0 = first_season.iter().sum::<f64>() / SEASON as f64;
    let trend0 = if history.len() >= 2 * SEASON {
        let second = history[SEASON..2 * SEASON].iter().sum::<f64>() / SEASON as f64;
        (second - level0) / SEASON as f64
    } else {
        0.0
    };
    let mut seasonals = [0.0; SEASON];
    for (s, y) in seasonals.iter_mut().zip(first_season) {
        *s = y - level0;
    }

    // The first season was used to set the state, so its errors do not measure the fit.
    let mut fit = Fit { level: level0, trend: trend0, seasonals, squared_error_sum: 0.0, errors: 0 };
    for (t, &y) in history.iter().enumerate() {
        let season = t % SEASON;
        let predicted = fit.level + p.phi * fit.trend + fit.seasonals[season];
        if t >= SEASON {
            fit.squared_error_sum += (y - predicted).powi(2);
            fit.errors += 1;
        }
        let previous_level = fit.level;
        fit.level = p.alpha * (y - fit.seasonals[season]) + (1.0 - p.alpha) * (previous_level + p.phi * fit.trend);
        fit.trend = p.beta * (fit.level - previous_level) + (1.0 - p.beta) * p.phi * fit.trend;
        fit.seasonals[season] = p.gamma * (y - fit.level) + (1.0 - p.gamma) * fit.seasonals[season];
    }
    fit
}

/// Fits the smoothing parameters by grid search on the one-step squared error and forecasts.
// NOTE: the variance covers the daily noise carried through the model, not the uncertainty of
// the fitted trend, so under steady growth the interval is too narrow. In the backtest of 1.5%
// daily growth, 48% of the 14-day totals fell inside the 80% interval.

fn holt_winters(history: &[f64], horizon: usize) -> SeriesForecast {
    let mut best: Option<(Parameters, Fit)> = None;
    for alpha in [0.05, 0.1, 0.2, 0.3, 0.5, 0.7] {
        for beta in [0.0, 0.05, 0.15] {
            for gamma in [0.05, 0.1, 0.2, 0.4] {
                for phi in [0.9, 0.98, 1.0] {
                    let parameters = Parameters { alpha, beta, gamma, phi };
                    let fit = run(history, parameters);
                    if best.as_ref().is_none_or(|(_, b)| fit.squared_error_sum < b.squared_error_sum) {
                        best = Some((parameters, fit));
                    }
                }
            }
        }
    }
    let Some((p, fit)) = best else {
        return forecast(&history[..SEASON - 1], horizon, 0.0);
    };

    let n = history.len();
    let mut means = Vec::with_capacity(horizon);
    let mut carry = Vec::with_capacity(horizon);
    let mut damping = 0.0;
    let mut power = 1.0;
    for h in 1..=horizon {
        power *= p.phi;
        damping += power;
        let season = (n + h - 1) % SEASON;
        means.push((fit.level + damping * fit.trend + fit.seasonals[season]).max(0.0));
        // c_h = alpha (1 + beta * sum of phi^i) + gamma (1 - alpha) on whole seasons.
        let seasonal = if h % SEASON == 0 { p.gamma * (1.0 - p.alpha) } else { 0.0 };
        carry.push(p.alpha * (1.0 + p.beta * damping) + seasonal);
    }

    let sigma = if fit.errors >= 3 {
        (fit.squared_error_sum / fit.errors as f64).sqrt()
    } else {
        // Too few errors to measure the fit: use the spread of the history itself.
        let mean = history.iter().sum::<f64>() / n as f64;
        (history.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt()
    };
    SeriesForecast { method: Method::HoltWintersWeekly, means, sigma, carry, shared_variance: 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_history_uses_mean() {
        let forecast = forecast(&[10.0, 12.0, 14.0], 5, 0.0);
        assert_eq!(forecast.method, Method::DailyMean);
        assert_eq!(forecast.means, vec![12.0; 5]);
        assert!(forecast.day_sd(1) > 0.0);
    }

    #[test]
    fn no_history_uses_run_rate() {
        let forecast = forecast(&[], 3, 24.0);
        assert_eq!(forecast.method, Method::RunRate);
        assert_eq!(forecast.means, vec![24.0; 3]);
    }

    #[test]
    fn weekly_pattern_repeats() {
        let week = [10.0, 10.0, 10.0, 10.0, 10.0, 2.0, 2.0];
        let history: Vec<f64> = week.iter().cycle().take(28).copied().collect();
        let forecast = forecast(&history, 7, 0.0);
        assert_eq!(forecast.method, Method::HoltWintersWeekly);
        for (predicted, expected) in forecast.means.iter().zip(week) {
            assert!((predicted - expected).abs() < 0.5, "{:?}", forecast.means);
        }
    }

    #[test]
    fn spike_clipped_before_fit() {
        let mut history = vec![100.0; 28];
        history[10] = 1000.0;
        let clipped = clip_outliers(&history);
        assert!(clipped[10] < 130.0, "{}", clipped[10]);
        assert_eq!(clipped[11], 100.0);
    }

    #[test]
    fn total_variance_grows_with_horizon() {
        let history: Vec<f64> = (0..21).map(|d| 10.0 + (d % 3) as f64).collect();
        let forecast = forecast(&history, 10, 0.0);
        let (_, short) = forecast.weighted_total(&[1.0; 3]);
        let (mean, long) = forecast.weighted_total(&[1.0; 10]);
        assert!(long > short);
        assert!((mean - forecast.means.iter().sum::<f64>()).abs() < 1e-9);
    }
}
