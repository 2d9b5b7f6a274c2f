//! The usage writer: moves usage events from request handlers to the store in batches.
//!
//! Request handlers call [`UsageSink::record`], which never waits for the database: it puts
//! the event into a bounded channel, or appends it to the journal when the channel is full or
//! closed. [`UsageWriter::run`] inserts the channel's events in batches, appends a batch to the
//! journal when the insert fails, and replays the journal in the background.
//!
//! The writer does not wake for each event: a sink wakes it when a full batch is queued, and a
//! timer wakes it every flush interval otherwise. At thousands of requests per second this saves
//! a thread wake-up per request on the proxy's CPU.

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::journal::Journal;
use super::UsageEvent;
use crate::store::Store;

/// How long one batch insert may take before the writer journals the batch instead. An insert
/// that commits after the timeout is harmless, because replay skips stored ids.
const INSERT_TIMEOUT: Duration = Duration::from_secs(30);
/// Minimum time between two log lines about the same repeated failure.
const LOG_INTERVAL_MS: i64 = 10_000;

/// Counters of events since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WriterStats {
    /// Events that a batch insert sent to the store.
    pub written: u64,
    /// Events appended to the journal because the channel was full or closed or the store failed.
    pub journaled: u64,
    /// Events that journal replays sent to the store.
    pub replayed: u64,
    /// Events lost because neither the store nor the journal accepted them.
    pub dropped: u64,
}

/// Batching and replay settings of the writer.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Maximum events per insert.
    pub batch_size: usize,
    /// Maximum time an event waits in a partial batch before the batch is inserted.
    pub flush_interval: Duration,
    /// Time between replays of a non-empty journal.
    pub replay_interval: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            batch_size: 500,
            flush_interval: Duration::from_secs(1),
            replay_interval: Duration::from_secs(30),
        }
    }
}

/// State shared by the sink clones and the writer.
struct Shared {
    journal: Arc<Journal>,
    /// Wakes the writer once `batch_size` events are queued.
    batch_ready: Notify,
    /// The writer's batch size, set when it starts.
    batch_size: AtomicUsize,
    written: AtomicU64,
    journaled: AtomicU64,
    dropped: AtomicU64,
    /// Log limiters for a full channel, a failed batch insert and a failed journal write.
    overflow_log: LogLimiter,
    store_log: LogLimiter,
    failure_log: LogLimiter,
}

impl Shared {
    fn stats(&self) -> WriterStats {
        WriterStats {
            written: self.written.load(Ordering::Relaxed),
            journaled: self.journaled.load(Ordering::Relaxed),
            replayed: self.journal.replayed_total(),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// The handle that request handlers use to record usage. Cheap to clone.
#[derive(Clone)]
pub struct UsageSink {
    sender: mpsc::Sender<UsageEvent>,
    shared: Arc<Shared>,
}

/// Creates a sink and the writer that drains it, joined by a channel of `capacity` events
/// (at least 1).
pub fn usage_channel(capacity: usize, journal: Arc<Journal>) -> (UsageSink, UsageWriter) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    let shared = Arc::new(Shared {
        journal,
        batch_ready: Notify::new(),
        batch_size: AtomicUsize::new(WriterOptions::default().batch_size),
        written: AtomicU64::new(0),
        journaled: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        overflow_log: LogLimiter::new(),
        store_log: LogLimiter::new(),
        failure_log: LogLimiter::new(),
    });
    let sink = UsageSink {
        sender,
        shared: Arc::clone(&shared),
    };
    (sink, UsageWriter { receiver, shared })
}

impl UsageSink {
    /// Queues the event for the writer without waiting. When the channel is full or the
    /// writer has stopped, appends the event to the journal instead, which is a small
    /// synchronous file write and sync. Logs, rate-limited, when even that fails.
    pub fn record(&self, event: UsageEvent) {
        let event = match self.sender.try_send(event) {
            Ok(()) => {
                let queued = self.sender.max_capacity() - self.sender.capacity();
                if queued >= self.shared.batch_size.load(Ordering::Relaxed) {
                    self.shared.batch_ready.notify_one();
                }
                return;
            }
            Err(TrySendError::Full(event)) => {
                if let Some(suppressed) = self.shared.overflow_log.allow() {
                    tracing::warn!(
                        suppressed,
                        "usage channel is full; journaling events until the writer catches up"
                    );
                }
                event
            }
            Err(TrySendError::Closed(event)) => event,
        };

        match self.shared.journal.append(std::slice::from_ref(&event)) {
            Ok(()) => {
                self.shared.journaled.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.shared.failure_log.allow() {
                    tracing::error!(
                        event_id = %event.id,
                        %error,
                        suppressed,
                        "failed to journal a usage event; the event is lost"
                    );
                }
            }
        }
    }

    /// Returns the writer's counters.
    pub fn stats(&self) -> WriterStats {
        self.shared.stats()
    }
}

/// The task that moves events from the channel to the store. See [`UsageWriter::run`].
pub struct UsageWriter {
    receiver: mpsc::Receiver<UsageEvent>,
    shared: Arc<Shared>,
}

impl UsageWriter {
    /// Returns the writer's counters, the same as [`UsageSink::stats`].
    pub fn stats(&self) -> WriterStats {
        self.shared.stats()
    }

    /// Runs until `shutdown` resolves or every sink is dropped. Inserts events in batches of
    /// up to `batch_size`, and every `flush_interval` whatever has arrived, and appends a batch
    /// to the journal when its insert fails or times out. At start and every
    /// `replay_interval`, replays a non-empty journal in a background task.
    ///
    /// On shutdown, closes the channel, so that later [`UsageSink::record`] calls go to the
    /// journal, and writes the queued events to the store or, failing that, the journal.
    /// A replay still running is cancelled; its files stay for the next start.
    pub async fn run(
        mut self,
        store: Store,
        options: WriterOptions,
        shutdown: impl Future<Output = ()>,
    ) {
        let batch_size = options.batch_size.max(1);
        self.shared.batch_size.store(batch_size, Ordering::Relaxed);
        let replay_interval = options.replay_interval.max(Duration::from_millis(1));
        let flush_interval = options.flush_interval.max(Duration::from_millis(1));
        tracing::info!(
            batch_size,
            flush_interval = ?flush_interval,
            replay_interval = ?replay_interval,
            "usage writer started"
        );

        let mut replay_task = self.start_replay(&store, None);
        let mut replay_timer =
            tokio::time::interval_at(Instant::now() + replay_interval, replay_interval);
        replay_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut flush_timer = tokio::time::interval_at(Instant::now() + flush_interval, flush_interval);
        flush_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);

        tokio::pin!(shutdown);
        let mut batch = Vec::with_capacity(batch_size);
        loop {
            // Timers come before the wake-up, so that a steady stream of full batches cannot starve them.
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                _ = replay_timer.tick() => {
                    replay_task = self.start_replay(&store, replay_task);
                    continue;
                }
                _ = flush_timer.tick() => {}
                () = self.shared.batch_ready.notified() => {}
            }
            if self.drain(&store, &mut batch, batch_size).await {
                break;
            }
        }

        self.receiver.close();
        if let Some(task) = replay_task {
            task.abort();
        }
        loop {
            let room = batch_size - batch.len();
            if self.receiver.recv_many(&mut batch, room).await == 0 {
                break;
            }
            if batch.len() >= batch_size {
                self.write_batch(&store, &mut batch).await;
            }
        }
        self.write_batch(&store, &mut batch).await;

        let stats = self.stats();
        tracing::info!(
            written = stats.written,
            journaled = stats.journaled,
            replayed = stats.replayed,
            dropped = stats.dropped,
            "usage writer stopped"
        );
    }

    /// Inserts the queued events in batches of up to `batch_size` until the channel is empty.
    /// Returns true when the channel is closed and empty, that is, every sink is gone.
    async fn drain(&mut self, store: &Store, batch: &mut Vec<UsageEvent>, batch_size: usize) -> bool {
        loop {
            let mut closed = false;
            while batch.len() < batch_size {
                match self.receiver.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let full = batch.len() >= batch_size;
            self.write_batch(store, batch).await;
            if !full {
                return closed;
            }
        }
    }

    /// Inserts the batch, or journals it when the insert fails, and leaves `batch` empty.
    async fn write_batch(&self, store: &Store, batch: &mut Vec<UsageEvent>) {
        if batch.is_empty() {
            return;
        }
        let events = std::mem::replace(batch, Vec::with_capacity(batch.capacity()));
        let count = events.len() as u64;

        let error =
            match tokio::time::timeout(INSERT_TIMEOUT, store.insert_usage_events(&events)).await {
                Ok(Ok(_inserted)) => {
                    self.shared.written.fetch_add(count, Ordering::Relaxed);
                    return;
                }
                Ok(Err(error)) => format!("{error:#}"),
                Err(_elapsed) => format!("insert timed out after {INSERT_TIMEOUT:?}"),
            };
        if let Some(suppressed) = self.shared.store_log.allow() {
            tracing::warn!(
                events = count,
                %error,
                suppressed,
                "failed to write usage events to the database; journaling them"
            );
        }

        let journal = Arc::clone(&self.shared.journal);
        let first_id = events[0].id.clone();
        let appended = tokio::task::spawn_blocking(move || journal.append(&events)).await;
        match appended {
            Ok(Ok(())) => {
                self.shared.journaled.fetch_add(count, Ordering::Relaxed);
            }
            Ok(Err(error)) => self.report_lost(count, &first_id, &error.to_string()),
            Err(error) => self.report_lost(count, &first_id, &error.to_string()),
        }
    }

    fn report_lost(&self, count: u64, first_event_id: &str, error: &str) {
        self.shared.dropped.fetch_add(count, Ordering::Relaxed);
        if let Some(suppressed) = self.shared.failure_log.allow() {
            tracing::error!(
                events = count,
                first_event_id,
                error,
                suppressed,
                "failed to journal usage events after the database failed; the events are lost"
            );
        }
    }

    /// Starts a replay task when the journal is not empty and no replay is running, and
    /// returns the running task, if any.
    fn start_replay(
        &self,
        store: &Store,
        running: Option<JoinHandle<()>>,
    ) -> Option<JoinHandle<()>> {
        if running.as_ref().is_some_and(|task| !task.is_finished()) {
            return running;
        }
        let journal = Arc::clone(&self.shared.journal);
        if journal.pending_bytes() == 0 {
            return None;
        }

        let store = store.clone();
        Some(tokio::spawn(async move {
            if let Err(error) = journal.replay(&store).await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    pending_events = journal.pending_events(),
                    "failed to replay the usage journal; the next replay retries it"
                );
            }
        }))
    }
}

/// Lets one log line through per [`LOG_INTERVAL_MS`] and counts the ones it holds back.
struct LogLimiter {
    last_ms: AtomicI64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    fn new() -> Self {
        LogLimiter {
            last_ms: AtomicI64::new(i64::MIN),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Returns the number of log lines held back since the last one, or None to hold this one back.
    fn allow(&self) -> Option<u64> {
        let now = chrono::Utc::now().timestamp_millis();
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == i64::MIN || now.saturating_sub(last) >= LOG_INTERVAL_MS;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{
        assert_same_events_after_json, sample_event, sorted_by_id, sqlite_store,
        stored_events_by_id, wait_for_usage_count,
    };

    fn test_options(batch_size: usize) -> WriterOptions {
        WriterOptions {
            batch_size,
            flush_interval: Duration::from_millis(20),
            replay_interval: Duration::from_millis(50),
        }
    }

    fn open_journal(dir: &std::path::Path) -> Arc<Journal> {
        Arc::new(Journal::open(&dir.join("journal")).expect("open journal"))
    }

    #[tokio::test]
    async fn writes_batches_to_store() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = sqlite_store(dir.path()).await;
        let (sink, writer) = usage_channel(1000, open_journal(dir.path()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = tokio::spawn(writer.run(store.clone(), test_options(100), shutdown));

        let events: Vec<UsageEvent> = (0..250).map(sample_event).collect();
        for event in &events {
            sink.record(event.clone());
        }
        wait_for_usage_count(&store, 250).await;
        let _ = stop.send(());
        task.await.expect("writer task");

        assert_eq!(
            sink.stats(),
            WriterStats {
                written: 250,
                ..WriterStats::default()
            }
        );
        assert_eq!(stored_events_by_id(&store).await, sorted_by_id(&events));
    }

    #[tokio::test]
    async fn full_batch_is_written_before_the_flush_interval() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = sqlite_store(dir.path()).await;
        let (sink, writer) = usage_channel(1000, open_journal(dir.path()));
        let options = WriterOptions {
            batch_size: 10,
            flush_interval: Duration::from_secs(3600),
            replay_interval: Duration::from_secs(3600),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(writer.run(store.clone(), options, async {
            let _ = stopped.await;
        }));

        // Nine events stay queued: no batch is full and the flush timer is an hour away.
        for n in 0..9 {
            sink.record(sample_event(n));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(store.count_usage_events().await.expect("count"), 0);
        // The tenth fills the batch and wakes the writer.
        sink.record(sample_event(9));
        tokio::time::timeout(Duration::from_secs(10), wait_for_usage_count(&store, 10))
            .await
            .expect("a full batch is written without waiting for the timer");
        let _ = stop.send(());
        task.await.expect("writer task");
        assert_eq!(sink.stats().written, 10);
    }

    #[tokio::test]
    async fn shutdown_drains_channel() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = sqlite_store(dir.path()).await;
        let (sink, writer) = usage_channel(100, open_journal(dir.path()));
        for n in 0..30 {
            sink.record(sample_event(n));
        }

        writer
            .run(store.clone(), test_options(7), std::future::ready(()))
            .await;
        assert_eq!(store.count_usage_events().await.expect("count"), 30);
        assert_eq!(sink.stats().written, 30);

        // The writer is gone, so later events go to the journal.
        sink.record(sample_event(30));
        assert_eq!(sink.stats().journaled, 1);
    }

    #[tokio::test]
    async fn sink_journals_when_channel_full() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let journal = open_journal(dir.path());
        let (sink, writer) = usage_channel(1, Arc::clone(&journal));
        for n in 0..3 {
            sink.record(sample_event(n));
        }
        assert_eq!(sink.stats().journaled, 2);
        assert_eq!(journal.pending_events(), 2);

        drop(writer);
        sink.record(sample_event(3));
        assert_eq!(sink.stats().journaled, 3);
        assert_eq!(journal.pending_events(), 3);
        assert_eq!(sink.stats().dropped, 0);
    }

    #[tokio::test]
    async fn failed_store_journals_then_replays_once() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let journal = open_journal(dir.path());
        let events: Vec<UsageEvent> = (0..20).map(sample_event).collect();

        let closed = sqlite_store(dir.path()).await;
        closed.close().await;
        let (sink, writer) = usage_channel(100, Arc::clone(&journal));
        for event in &events {
            sink.record(event.clone());
        }
        writer
            .run(closed, test_options(8), std::future::ready(()))
            .await;
        assert_eq!(sink.stats().written, 0);
        assert_eq!(sink.stats().journaled, 20);
        assert_eq!(journal.pending_events(), 20);

        // A new writer on a working store replays the journal at start.
        let store = sqlite_store(dir.path()).await;
        let (sink, writer) = usage_channel(100, Arc::clone(&journal));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = tokio::spawn(writer.run(store.clone(), test_options(8), shutdown));
        wait_for_usage_count(&store, 20).await;
        let _ = stop.send(());
        task.await.expect("writer task");

        assert_eq!(sink.stats().replayed, 20);
        assert_eq!(journal.pending_events(), 0);
        assert_eq!(
            journal.replay(&store).await.expect("replay empty journal"),
            0
        );
        assert_same_events_after_json(&stored_events_by_id(&store).await, &sorted_by_id(&events));
    }

    #[test]
    fn log_limiter_holds_back_repeats() {
        let limiter = LogLimiter::new();
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        limiter.last_ms.store(0, Ordering::Relaxed);
        assert_eq!(limiter.allow(), Some(2));
    }
}
