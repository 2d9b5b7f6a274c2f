//! Backtests of the spend forecast on synthetic daily histories: flat, growing, a weekly
//! pattern, and flat with a one-day spike of ten times the usual spend. Run with `--nocapture` to print the table that
//! docs/BENCHMARKS.md records.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::forecast::{forecast, Z_80};

/// Days of each synthetic history.
const DAYS: usize = 84;
/// Days forecast from each cut, about the rest of a month seen from its middle.
const HORIZON: usize = 14;
/// The first cut leaves four weeks of history; later cuts move one day at a time.
const FIRST_CUT: usize = 28;
/// Relative standard deviation of the daily noise.
const NOISE: f64 = 0.08;

/// Draws from the standard normal distribution (Box-Muller transform).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn history(pattern: &str, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..DAYS)
        .map(|day| {
            let level = match pattern {
                "flat" => 100.0,
                "growing" => 100.0 * 1.015f64.powi(day as i32),
                // Day 0 is a Monday: five busy weekdays, then a quiet weekend.
                "weekly" => if day % 7 < 5 { 100.0 } else { 30.0 },
                // The spike lies before the first cut, so every forecast has it in its history.
                "spike" => if day == 20 { 1000.0 } else { 100.0 },
                _ => unreachable!("unknown pattern {pattern}"),
            };
            (level * (1.0 + NOISE * normal(&mut rng))).max(0.0)
        })
        .collect()
}

/// Errors of one pattern over every cut: MAPE of the 14-day total, MAPE of the single days,
/// the share of totals inside the 80% interval, and the total's MAPE of a naive forecast
/// (the mean of the last 7 days).
struct Score {
    total_mape: f64,
    daily_mape: f64,
    coverage: f64,
    naive_total_mape: f64,
}

fn backtest(series: &[f64]) -> Score {
    let (mut total_errors, mut daily_errors, mut inside, mut naive_errors) = (Vec::new(), Vec::new(), 0usize, Vec::new());
    for cut in FIRST_CUT..=(DAYS - HORIZON) {
        let result = forecast(&series[..cut], HORIZON, 0.0);
        let actual = &series[cut..cut + HORIZON];
        let actual_total: f64 = actual.iter().sum();
        let (predicted_total, sd) = result.weighted_total(&[1.0; HORIZON]);
        total_errors.push((predicted_total - actual_total).abs() / actual_total);
        if (actual_total - predicted_total).abs() <= Z_80 * sd {
            inside += 1;
        }
        for (predicted, actual) in result.means.iter().zip(actual) {
            daily_errors.push((predicted - actual).abs() / actual);
        }
        let naive = series[cut - 7..cut].iter().sum::<f64>() / 7.0 * HORIZON as f64;
        naive_errors.push((naive - actual_total).abs() / actual_total);
    }
    let mean = |values: &[f64]| 100.0 * values.iter().sum::<f64>() / values.len() as f64;
    Score {
        total_mape: mean(&total_errors),
        daily_mape: mean(&daily_errors),
        coverage: 100.0 * inside as f64 / total_errors.len() as f64,
        naive_total_mape: mean(&naive_errors),
    }
}

#[test]
fn backtest_mape_per_pattern() {
    // Upper limits of the 14-day total's MAPE, a little above the measured values.
    let limits = [("flat", 4.0), ("growing", 8.0), ("weekly", 5.0), ("spike", 12.0)];
    println!("| pattern | MAPE, 14-day total | MAPE, single days | totals inside the 80% interval | naive MAPE, 14-day total |");
    println!("|---|---|---|---|---|");
    for (pattern, limit) in limits {
        let scores: Vec<Score> = (0..10).map(|seed| backtest(&history(pattern, seed))).collect();
        let average = |f: fn(&Score) -> f64| scores.iter().map(f).sum::<f64>() / scores.len() as f64;
        let total = average(|s| s.total_mape);
        println!(
            "| {pattern} | {total:.1}% | {:.1}% | {:.0}% | {:.1}% |",
            average(|s| s.daily_mape),
            average(|s| s.coverage),
            average(|s| s.naive_total_mape)
        );
        assert!(total < limit, "{pattern}: MAPE of the 14-day total {total:.1}% is above {limit}%");
    }
}
