//! The reranking engine: one thread owns the cross-encoder and serves a fair, bounded queue,
//! under a latency budget. A search asks for a reordering and gets `None` (keep the retrieval
//! order) instead of waiting past the budget: when the queue is busy, when the estimated cost of
//! its candidates does not fit, or when the answer comes too late.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::InferenceError;
use super::queue::{CloseOnDrop, FairQueue};
use super::rerank::{Reranker, RerankerInfo};

struct RerankJob {
    query: String,
    passages: Vec<String>,
    /// The caller stops waiting at this moment: a job still queued then is skipped.
    deadline: Instant,
    reply: oneshot::Sender<Result<Vec<f32>, InferenceError>>,
}

/// A handle to the reranker's thread. Cheap to clone.
#[derive(Clone)]
pub struct RerankEngine {
    queue: Arc<FairQueue<RerankJob>>,
    info: Arc<RerankerInfo>,
    /// Moving average of the time per passage, which sizes what fits in a budget.
    per_passage: Arc<Mutex<Duration>>,
    _worker: Arc<CloseOnDrop<RerankJob>>,
}

/// Why a reordering was skipped (for metrics and the search's debug log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// Other searches are being reranked.
    Busy,
    /// Even a few candidates would take longer than the budget.
    OverBudget,
    /// The answer did not come within the budget.
    Late,
    Failed,
}

impl RerankEngine {
    pub fn start(reranker: Reranker, queue_capacity: usize) -> RerankEngine {
        let queue = Arc::new(FairQueue::new("reranker", queue_capacity));
        let info = Arc::new(reranker.info.clone());
        // A first guess for a small cross-encoder on a small CPU; the first job corrects it.
        let per_passage = Arc::new(Mutex::new(Duration::from_millis(4)));
        let (worker_queue, worker_cost) = (Arc::clone(&queue), Arc::clone(&per_passage));
        std::thread::Builder::new()
            .name("companero-rerank".into())
            .spawn(move || run_worker(&reranker, &worker_queue, &worker_cost))
            .expect("spawn the reranker thread");
        RerankEngine {
            _worker: Arc::new(CloseOnDrop(Arc::clone(&queue))),
            queue,
            info,
            per_passage,
        }
    }

    pub fn info(&self) -> &RerankerInfo {
        &self.info
    }

    /// How many passages fit in `budget` now (0 when even one would not).
    pub fn fits(&self, budget: Duration) -> usize {
        let per_passage = *self.per_passage.lock().expect("cost");
        // The query is read once per pair, so the cost is close to linear in passages.
        (budget.as_secs_f64() / per_passage.as_secs_f64().max(1e-6)) as usize
    }

    /// Relevance logits of `passages` to `query`, in order, or why there are none within
    /// `budget`. Passages beyond what fits are not sent: the caller reorders only the head of
    /// its list (`scores.len()` tells how much).
    pub async fn rerank(
        &self,
        tenant: &str,
        query: &str,
        mut passages: Vec<String>,
        budget: Duration,
    ) -> Result<Vec<f32>, Skipped> {
        if passages.is_empty() {
            return Ok(Vec::new());
        }
        if !self.queue.is_empty() {
            return Err(Skipped::Busy);
        }
        // Reordering fewer than a handful is not worth the time.
        let fits = self.fits(budget);
        if fits < passages.len().min(5) {
            return Err(Skipped::OverBudget);
        }
        passages.truncate(fits);
        let deadline = Instant::now() + budget;
        let (reply, answer) = oneshot::channel();
        let job = RerankJob {
            query: query.to_string(),
            passages,
            deadline,
            reply,
        };
        self.queue.push(tenant, job).map_err(|_| Skipped::Busy)?;
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(Ok(scores))) => Ok(scores),
            Ok(_) => Err(Skipped::Failed),
            Err(_) => Err(Skipped::Late),
        }
    }
}

fn run_worker(reranker: &Reranker, queue: &FairQueue<RerankJob>, cost: &Mutex<Duration>) {
    while let Some(job) = queue.pop() {
        if job.reply.is_closed() || Instant::now() >= job.deadline {
            continue;
        }
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            reranker.score(&job.query, &job.passages)
        }))
        .unwrap_or_else(|_| Err(InferenceError::Model("the reranker failed".into())));
        let took = started.elapsed();
        queue.record_job_time(took);
        let each = took.div_f64(job.passages.len().max(1) as f64);
        {
            let mut average = cost.lock().expect("cost");
            *average = average.mul_f64(0.7) + each.mul_f64(0.3);
        }
        metrics::histogram!("inference_rerank_seconds").record(took.as_secs_f64());
        if result.is_err() {
            metrics::counter!("inference_errors_total", "engine" => "reranker").increment(1);
        }
        let _ = job.reply.send(result);
    }
}
