//! Token and cost accounting: usage extraction, the stream scanner, and the path of usage events to
//! the store.

pub mod event;
pub mod journal;
pub mod outcome;
pub mod priority;
pub mod response;
pub mod sse;
pub mod usage;
pub mod writer;

pub use event::UsageEvent;
pub use response::ResponseSummary;
pub use sse::SseScanner;
pub use usage::Usage;
