//! Usage analytics: rollups of usage events, the queries of the admin API and the dashboard, and
//! the month-end spend forecast with its budget alert.

pub mod alert;
pub mod forecast;
pub mod month;
pub mod query;
pub mod rollup;

#[cfg(test)]
mod backtest;
#[cfg(test)]
mod tests;
