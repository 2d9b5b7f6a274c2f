//! A pool of embedding threads beside Pingora's runtimes, so that model inference never blocks a
//! request thread. Requests queue on a bounded channel; a free worker takes every queued request
//! up to the batch size and embeds them in one forward pass, so concurrent requests share the cost.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::model::{EmbedError, Embedder};

struct Job {
    text: String,
    reply: oneshot::Sender<Result<Vec<f32>, EmbedError>>,
}

/// Sizes of the pool.
#[derive(Clone, Copy, Debug)]
pub struct PoolOptions {
    pub threads: usize,
    pub max_batch: usize,
    pub queue_capacity: usize,
}

/// The sending side of the pool; cheap to clone. The workers stop when every handle is dropped.
#[derive(Clone)]
pub struct EmbedPool {
    sender: SyncSender<Job>,
}

impl EmbedPool {
    /// Starts `options.threads` workers that share one loaded model.
    pub fn start(embedder: Embedder, options: PoolOptions) -> std::io::Result<EmbedPool> {
        let (sender, receiver) = sync_channel::<Job>(options.queue_capacity.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let precision = embedder.precision();
        let embedder = Arc::new(embedder);
        for number in 0..options.threads.max(1) {
            let receiver = receiver.clone();
            let embedder = embedder.clone();
            let max_batch = options.max_batch.max(1);
            std::thread::Builder::new()
                .name(format!("watchllm-embed-{number}"))
                .spawn(move || run_worker(&embedder, &receiver, max_batch))?;
        }
        info!(threads = options.threads.max(1), max_batch = options.max_batch, ?precision, "embedding pool started");
        Ok(EmbedPool { sender })
    }

    /// Embeds one text. Fails at once with `Unavailable` when the queue is full, so that a
    /// backlog degrades lookups to the exact cache instead of delaying requests.
    pub async fn embed(&self, text: String) -> Result<Vec<f32>, EmbedError> {
        let (reply, answer) = oneshot::channel();
        match self.sender.try_send(Job { text, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => return Err(EmbedError::Unavailable),
        }
        answer.await.unwrap_or(Err(EmbedError::Unavailable))
    }
}

fn run_worker(embedder: &Embedder, receiver: &Mutex<Receiver<Job>>, max_batch: usize) {
    loop {
        let jobs = {
            let Ok(queue) = receiver.lock() else { return };
            let Ok(first) = queue.recv() else { return };
            let mut jobs = vec![first];
            while jobs.len() < max_batch {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            jobs
        };
        let started = Instant::now();
        let texts: Vec<&str> = jobs.iter().map(|job| job.text.as_str()).collect();
        let results = embedder.embed_batch(&texts);
        if started.elapsed().as_secs() >= 1 {
            warn!(batch = jobs.len(), elapsed_ms = started.elapsed().as_millis() as u64, "slow embedding batch");
        }
        for (job, result) in jobs.into_iter().zip(results) {
            // The requester may have gone; its result is then dropped.
            let _ = job.reply.send(result);
        }
    }
}
