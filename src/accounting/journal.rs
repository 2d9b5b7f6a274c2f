//! The usage journal: a local file of usage events that the database has not accepted yet.
//!
//! Events are appended as JSON lines to `usage.journal` and synced to disk before `append`
//! returns. `replay` renames that file to `usage.journal.replaying-<millis>`, so appends go on
//! into a fresh file, inserts the renamed file's events into the store and deletes it only
//! when every batch was inserted. Inserts skip ids that are already stored, so replaying a
//! file again after a crash or a failed batch does not insert an event twice.
//!
//! One process at a time may use a journal directory, because replays in two processes could
//! delete each other's files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use anyhow::Context;
use tokio::io::AsyncBufReadExt;

use super::UsageEvent;
use crate::store::Store;

const JOURNAL_FILE: &str = "usage.journal";
const REPLAYING_PREFIX: &str = "usage.journal.replaying-";
/// Events per insert during a replay.
const REPLAY_BATCH_SIZE: usize = 1000;

/// An append-only, crash-safe file of usage events. See the module documentation.
pub struct Journal {
    dir: PathBuf,
    state: Mutex<JournalState>,
    /// Serializes replays, so that two never insert from the same file at once.
    replay_lock: tokio::sync::Mutex<()>,
    replayed_total: AtomicU64,
}

struct JournalState {
    /// Open handle to `usage.journal`. None after a replay renamed the file, until the next append.
    file: Option<File>,
    /// Size and line count of `usage.journal`.
    active_bytes: u64,
    active_events: u64,
    /// Size and line count of the `replaying-*` files.
    aside_bytes: u64,
    aside_events: u64,
    /// True when `usage.journal` may end in a partial line, after a crash or a failed write.
    /// The next append then starts with a newline, so its first event gets a line of its own.
    torn: bool,
}

impl Journal {
    /// Opens the journal in `dir`, creating the directory and file if missing.
    pub fn open(dir: &Path) -> io::Result<Journal> {
        fs::create_dir_all(dir)?;
        let active = dir.join(JOURNAL_FILE);
        let file = open_append(&active)?;
        sync_dir(dir);
        let scan = scan_file(&active)?;

        let mut state = JournalState {
            file: Some(file),
            active_bytes: scan.bytes,
            active_events: scan.lines,
            aside_bytes: 0,
            aside_events: 0,
            torn: !scan.ends_with_newline,
        };
        for path in replaying_files(dir)? {
            let scan = scan_file(&path)?;
            state.aside_bytes += scan.bytes;
            state.aside_events += scan.lines;
        }

        Ok(Journal {
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
            replay_lock: tokio::sync::Mutex::new(()),
            replayed_total: AtomicU64::new(0),
        })
    }

    /// Appends the events, one JSON line each, and syncs the file's data to disk.
    pub fn append(&self, events: &[UsageEvent]) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }

        let mut state = self.lock_state();
        let mut buffer = Vec::with_capacity(events.len() * 512);
        if state.torn {
            buffer.push(b'\n');
        }
        for event in events {
            serde_json::to_writer(&mut buffer, event).map_err(io::Error::other)?;
            buffer.push(b'\n');
        }

        if state.file.is_none() {
            state.file = Some(open_append(&self.dir.join(JOURNAL_FILE))?);
            sync_dir(&self.dir);
        }
        let Some(file) = state.file.as_mut() else {
            return Err(io::Error::other("journal file is not open"));
        };
        let written = file
            .write_all(&buffer)
            .and_then(|()| file.flush())
            .and_then(|()| file.sync_data());
        if let Err(error) = written {
            // Part of the buffer may be on disk. Its events still count as pending, so that
            // the writer replays the file, but a partial line has to be cut off by a newline.
            state.torn = true;
            return Err(error);
        }

        state.torn = false;
        state.active_bytes += buffer.len() as u64;
        state.active_events += events.len() as u64;
        Ok(())
    }

    /// Returns the size in bytes of all journal files, including ones being replayed.
    pub fn pending_bytes(&self) -> u64 {
        let state = self.lock_state();
        state.active_bytes + state.aside_bytes
    }

    /// Returns the number of lines in all journal files. A torn line counts as an event.
    pub fn pending_events(&self) -> u64 {
        let state = self.lock_state();
        state.active_events + state.aside_events
    }

    /// Returns the number of events that replays in this process sent to the store.
    pub fn replayed_total(&self) -> u64 {
        self.replayed_total.load(Ordering::Relaxed)
    }

    /// Moves the journal aside and inserts its events into the store, together with any
    /// `replaying-*` files that an earlier replay left behind, oldest first. Each file is
    /// deleted after all its events were inserted. A line that does not parse, such as a
    /// line torn by a crash, is skipped with a warning.
    ///
    /// Returns the number of events sent to the store, including events whose id was already
    /// stored. On an error the remaining files stay for the next replay.
    pub async fn replay(&self, store: &Store) -> anyhow::Result<u64> {
        let _replaying = self.replay_lock.lock().await;
        self.move_active_aside()?;

        let mut replayed = 0;
        for path in replaying_files(&self.dir)? {
            let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let lines = replay_file(&path, store).await?;
            self.replayed_total
                .fetch_add(lines.events, Ordering::Relaxed);
            replayed += lines.events;

            fs::remove_file(&path)
                .with_context(|| format!("failed to delete replayed journal {}", path.display()))?;
            let mut state = self.lock_state();
            state.aside_bytes = state.aside_bytes.saturating_sub(bytes);
            state.aside_events = state.aside_events.saturating_sub(lines.lines);
            drop(state);

            tracing::info!(
                file = %path.display(),
                events = lines.events,
                skipped_lines = lines.skipped,
                "replayed usage journal"
            );
        }
        Ok(replayed)
    }

    /// Renames a non-empty `usage.journal` to a new `replaying-<millis>` file.
    fn move_active_aside(&self) -> anyhow::Result<()> {
        let mut state = self.lock_state();
        if state.active_bytes == 0 {
            return Ok(());
        }

        let mut millis = chrono::Utc::now().timestamp_millis();
        let mut target = self.dir.join(format!("{REPLAYING_PREFIX}{millis}"));
        while target.exists() {
            millis += 1;
            target = self.dir.join(format!("{REPLAYING_PREFIX}{millis}"));
        }

        // Closing the handle first lets the next append create a new file on every platform.
        state.file = None;
        let source = self.dir.join(JOURNAL_FILE);
        fs::rename(&source, &target).with_context(|| {
            format!(
                "failed to rename {} to {}",
                source.display(),
                target.display()
            )
        })?;
        sync_dir(&self.dir);

        state.aside_bytes += state.active_bytes;
        state.aside_events += state.active_events;
        state.active_bytes = 0;
        state.active_events = 0;
        state.torn = false;
        Ok(())
    }

    fn lock_state(&self) -> MutexGuard<'_, JournalState> {
        // A panic while the lock was held cannot leave the counters unusable, so go on.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Counts from one replayed file.
struct ReplayedLines {
    /// Lines read, counted the way `scan_file` counts them.
    lines: u64,
    events: u64,
    skipped: u64,
}

/// Inserts the events of one journal file in batches.
async fn replay_file(path: &Path, store: &Store) -> anyhow::Result<ReplayedLines> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("failed to open journal {}", path.display()))?;
    let mut reader = tokio::io::BufReader::new(file);

    let mut counts = ReplayedLines {
        lines: 0,
        events: 0,
        skipped: 0,
    };
    let mut batch = Vec::with_capacity(REPLAY_BATCH_SIZE);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .await
            .with_context(|| format!("failed to read journal {}", path.display()))?;
        if read == 0 {
            break;
        }
        counts.lines += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }

        match serde_json::from_slice::<UsageEvent>(&line) {
            Ok(event) => batch.push(event),
            Err(error) => {
                counts.skipped += 1;
                // A crash in the middle of an append leaves a partial last line.
                tracing::warn!(
                    file = %path.display(),
                    line = counts.lines,
                    %error,
                    "skipped an invalid line in the usage journal"
                );
            }
        }

        if batch.len() >= REPLAY_BATCH_SIZE {
            store.insert_usage_events(&batch).await?;
            counts.events += batch.len() as u64;
            batch.clear();
        }
    }

    store.insert_usage_events(&batch).await?;
    counts.events += batch.len() as u64;
    Ok(counts)
}

/// Returns the `replaying-*` files in `dir`, oldest first.
fn replaying_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(millis) = name.to_str().and_then(|n| n.strip_prefix(REPLAYING_PREFIX)) else {
            continue;
        };
        // A suffix that is not a number sorts last but is still replayed.
        let order = millis.parse::<u64>().unwrap_or(u64::MAX);
        files.push((order, entry.path()));
    }
    files.sort();
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Syncs the directory entry of a created or renamed file. Best effort, because not every
/// platform can open a directory as a file.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
}

struct FileScan {
    bytes: u64,
    /// Complete lines plus a final partial line, if any.
    lines: u64,
    /// True for an empty file and for one whose last byte is a newline.
    ends_with_newline: bool,
}

fn scan_file(path: &Path) -> io::Result<FileScan> {
    let mut file = File::open(path)?;
    let mut scan = FileScan {
        bytes: 0,
        lines: 0,
        ends_with_newline: true,
    };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = match file.read(&mut chunk) {
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if read == 0 {
            break;
        }
        scan.bytes += read as u64;
        scan.lines += chunk[..read].iter().filter(|&&b| b == b'\n').count() as u64;
        scan.ends_with_newline = chunk[read - 1] == b'\n';
    }
    if !scan.ends_with_newline {
        scan.lines += 1;
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{
        assert_same_events_after_json, sample_event, sorted_by_id, sqlite_store,
        stored_events_by_id, with_postgres_store,
    };

    fn file_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read journal directory")
            .map(|entry| {
                entry
                    .expect("directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    fn append_raw(path: &Path, bytes: &[u8]) {
        let mut file = open_append(path).expect("open journal file");
        file.write_all(bytes).expect("write journal file");
    }

    #[tokio::test]
    async fn round_trip_with_torn_line() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let journal_dir = dir.path().join("journal");
        let events: Vec<UsageEvent> = (0..5).map(sample_event).collect();

        let journal = Journal::open(&journal_dir).expect("open journal");
        assert_eq!(journal.pending_bytes(), 0);
        journal.append(&events[..2]).expect("append");
        journal.append(&events[2..4]).expect("append");
        assert_eq!(journal.pending_events(), 4);
        assert!(journal.pending_bytes() > 0);
        drop(journal);

        // A crash in the middle of a write leaves a partial last line.
        append_raw(
            &journal_dir.join(JOURNAL_FILE),
            br#"{"id":"torn","created_at"#,
        );
        let journal = Journal::open(&journal_dir).expect("reopen journal");
        assert_eq!(
            journal.pending_events(),
            5,
            "the torn line counts as an event"
        );
        journal
            .append(&events[4..])
            .expect("append after the torn line");

        let store = sqlite_store(dir.path()).await;
        assert_eq!(journal.replay(&store).await.expect("replay"), 5);
        assert_eq!(journal.pending_bytes(), 0);
        assert_eq!(journal.pending_events(), 0);
        assert_eq!(journal.replayed_total(), 5);
        assert!(
            file_names(&journal_dir).is_empty(),
            "replayed files are deleted"
        );
        assert_same_events_after_json(&stored_events_by_id(&store).await, &sorted_by_id(&events));

        assert_eq!(
            journal.replay(&store).await.expect("replay empty journal"),
            0
        );
        assert_eq!(store.count_usage_events().await.expect("count"), 5);
    }

    #[tokio::test]
    async fn leftover_replaying_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let events: Vec<UsageEvent> = (0..3).map(sample_event).collect();

        // An earlier process crashed during a replay that had already inserted events[0].
        let store = sqlite_store(dir.path()).await;
        store
            .insert_usage_events(&events[..1])
            .await
            .expect("insert");
        let mut leftover = Vec::new();
        for event in &events[..2] {
            serde_json::to_writer(&mut leftover, event).expect("serialize");
            leftover.push(b'\n');
        }
        let journal_dir = dir.path().join("journal");
        fs::create_dir_all(&journal_dir).expect("create journal directory");
        append_raw(
            &journal_dir.join(format!("{REPLAYING_PREFIX}100")),
            &leftover,
        );

        let journal = Journal::open(&journal_dir).expect("open journal");
        journal.append(&events[2..]).expect("append");
        assert_eq!(journal.pending_events(), 3);

        assert_eq!(journal.replay(&store).await.expect("replay"), 3);
        assert!(
            file_names(&journal_dir).is_empty(),
            "replayed files are deleted"
        );
        assert_eq!(journal.pending_events(), 0);
        assert_same_events_after_json(&stored_events_by_id(&store).await, &sorted_by_id(&events));
    }

    #[tokio::test]
    async fn failed_replay_keeps_events() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let journal_dir = dir.path().join("journal");
        let events: Vec<UsageEvent> = (0..4).map(sample_event).collect();
        let journal = Journal::open(&journal_dir).expect("open journal");
        journal.append(&events[..3]).expect("append");

        let closed = sqlite_store(dir.path()).await;
        closed.close().await;
        assert!(
            journal.replay(&closed).await.is_err(),
            "a closed store should fail the replay"
        );
        assert_eq!(journal.pending_events(), 3);
        let names = file_names(&journal_dir);
        assert_eq!(names.len(), 1);
        assert!(names[0].starts_with(REPLAYING_PREFIX), "{names:?}");

        // Appends go on into a fresh usage.journal while the renamed file waits.
        journal.append(&events[3..]).expect("append");
        assert_eq!(journal.pending_events(), 4);
        assert_eq!(file_names(&journal_dir).len(), 2);

        let store = sqlite_store(dir.path()).await;
        assert_eq!(journal.replay(&store).await.expect("replay"), 4);
        assert_eq!(journal.pending_events(), 0);
        assert_same_events_after_json(&stored_events_by_id(&store).await, &sorted_by_id(&events));
    }

    #[tokio::test]
    async fn postgres_replay() {
        with_postgres_store(|store| async move {
            let dir = tempfile::tempdir().expect("temporary directory");
            let events: Vec<UsageEvent> = (0..3).map(sample_event).collect();
            let journal = Journal::open(dir.path()).expect("open journal");
            journal.append(&events).expect("append");

            assert_eq!(journal.replay(&store).await.expect("replay"), 3);
            assert_eq!(journal.replay(&store).await.expect("replay again"), 0);
            assert_same_events_after_json(
                &stored_events_by_id(&store).await,
                &sorted_by_id(&events),
            );
        })
        .await;
    }
}
