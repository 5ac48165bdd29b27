//! A bounded job queue that is fair between tenants, in admission and in order:
//!
//! - **admission**: one tenant may hold at most a share of the queue (`capacity / 4`, at least
//!   one), so a flood from one creator leaves room for everyone else; and a tenant with nothing
//!   waiting is always admitted, even into a full queue (up to twice the capacity), so another
//!   tenant's first request is never refused because of a flood;
//! - **order**: workers take jobs round-robin across the tenants that have any waiting, so an
//!   admitted job waits at most one job per other waiting tenant, not behind a whole flood.
//!
//! A refusal comes at once with an estimate of when to retry, instead of piling up.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::InferenceError;

pub struct FairQueue<J> {
    name: &'static str,
    capacity: usize,
    /// Jobs one tenant may have waiting.
    per_tenant: usize,
    state: Mutex<State<J>>,
    ready: Condvar,
}

struct State<J> {
    waiting: HashMap<String, VecDeque<J>>,
    /// Tenants with waiting jobs, in the order they get their next turn.
    turns: VecDeque<String>,
    len: usize,
    closed: bool,
    /// Moving average of how long a job takes, for `Retry-After`.
    average_job: Duration,
}

impl<J> FairQueue<J> {
    pub fn new(name: &'static str, capacity: usize) -> FairQueue<J> {
        let capacity = capacity.max(1);
        FairQueue {
            name,
            capacity,
            per_tenant: capacity.div_ceil(4),
            state: Mutex::new(State {
                waiting: HashMap::new(),
                turns: VecDeque::new(),
                len: 0,
                closed: false,
                average_job: Duration::from_secs(2),
            }),
            ready: Condvar::new(),
        }
    }

    /// Queues a job, or refuses with `Overloaded` when the queue is full.
    pub fn push(&self, tenant: &str, job: J) -> Result<(), InferenceError> {
        let mut state = self.state.lock().expect("queue lock");
        if state.closed {
            return Err(InferenceError::ShuttingDown);
        }
        let mine = state.waiting.get(tenant).map_or(0, VecDeque::len);
        let newcomer = mine == 0 && state.len < 2 * self.capacity;
        if !newcomer && (state.len >= self.capacity || mine >= self.per_tenant) {
            // Round-robin: this tenant's next job waits for one job of each waiting tenant
            // per job of its own ahead of it.
            let ahead = (mine + 1) * state.turns.len().max(1);
            let wait = state
                .average_job
                .mul_f64(ahead.min(state.len.max(1)) as f64);
            metrics::counter!("inference_rejected_total", "engine" => self.name).increment(1);
            return Err(InferenceError::Overloaded {
                retry_after: wait.max(Duration::from_secs(1)),
            });
        }
        let queue = state.waiting.entry(tenant.to_string()).or_default();
        if queue.is_empty() {
            state.turns.push_back(tenant.to_string());
        }
        state
            .waiting
            .get_mut(tenant)
            .expect("inserted above")
            .push_back(job);
        state.len += 1;
        self.report(state.len);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Takes the next job, waiting for one; `None` once the queue is closed.
    pub fn pop(&self) -> Option<J> {
        let mut state = self.state.lock().expect("queue lock");
        loop {
            if state.closed {
                return None;
            }
            if let Some(tenant) = state.turns.pop_front() {
                let queue = state.waiting.get_mut(&tenant).expect("tenant has a queue");
                let job = queue.pop_front().expect("tenants in turns have jobs");
                if queue.is_empty() {
                    state.waiting.remove(&tenant);
                } else {
                    state.turns.push_back(tenant);
                }
                state.len -= 1;
                self.report(state.len);
                return Some(job);
            }
            state = self.ready.wait(state).expect("queue lock");
        }
    }

    /// Feeds the `Retry-After` estimate.
    pub fn record_job_time(&self, took: Duration) {
        let mut state = self.state.lock().expect("queue lock");
        state.average_job = state.average_job.mul_f64(0.8) + took.mul_f64(0.2);
    }

    /// Stops the workers; queued jobs are dropped (their callers see the channel close).
    pub fn close(&self) {
        let mut state = self.state.lock().expect("queue lock");
        state.closed = true;
        state.waiting.clear();
        state.turns.clear();
        state.len = 0;
        drop(state);
        self.ready.notify_all();
    }

    pub fn len(&self) -> usize {
        self.state.lock().expect("queue lock").len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn report(&self, len: usize) {
        metrics::gauge!("inference_queue_depth", "engine" => self.name).set(len as f64);
    }
}

/// Closes a queue when dropped. Engine handles share one through an `Arc`, so the worker thread
/// ends when the last handle goes away.
pub struct CloseOnDrop<J>(pub std::sync::Arc<FairQueue<J>>);

impl<J> Drop for CloseOnDrop<J> {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_take_turns() {
        let queue = FairQueue::new("test", 10);
        for job in ["a1", "a2", "a3"] {
            queue.push("a", job).unwrap();
        }
        queue.push("b", "b1").unwrap();
        queue.push("c", "c1").unwrap();
        let order: Vec<_> = (0..5).map(|_| queue.pop().unwrap()).collect();
        assert_eq!(order, ["a1", "b1", "c1", "a2", "a3"]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_full_queue_refuses_with_a_retry_estimate() {
        let queue = FairQueue::new("test", 2);
        queue.push("a", 1).unwrap();
        queue.push("b", 2).unwrap();
        match queue.push("a", 3) {
            Err(InferenceError::Overloaded { retry_after }) => {
                assert!(retry_after >= Duration::from_secs(1))
            }
            other => panic!("expected overload, got {other:?}"),
        }
        queue.pop();
        queue.push("a", 3).expect("room again after a pop");
    }

    #[test]
    fn a_flooding_tenant_holds_only_its_share_and_others_are_served_within_a_bounded_wait() {
        let queue = std::sync::Arc::new(FairQueue::new("test", 32));
        // Tenant A floods: only a quarter of the queue is admitted, the rest refused at once.
        let admitted = (0..100)
            .filter(|i| queue.push("a", format!("a{i}")).is_ok())
            .count();
        assert_eq!(admitted, 8);
        // Others fill the rest; then the queue is full...
        for i in 0..24 {
            queue.push(&format!("t{}", i / 8), format!("t{i}")).unwrap();
        }
        assert_eq!(queue.len(), 32);
        // ...and still a tenant with nothing waiting is admitted.
        queue
            .push("b", "b1".to_string())
            .expect("B is admitted into a full queue");
        // A worker serves B after at most one job of each tenant ahead of it in the turn order.
        let worker = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                let mut served = Vec::new();
                while let Some(job) = queue.pop() {
                    let done = job == "b1";
                    served.push(job);
                    if done {
                        break;
                    }
                }
                served
            })
        };
        let served = worker.join().unwrap();
        let tenants_ahead = 4; // a, t0, t1, t2
        assert!(
            served.len() <= tenants_ahead + 1,
            "B waited behind {} jobs: {served:?}",
            served.len() - 1
        );
    }

    #[test]
    fn closing_wakes_waiting_workers() {
        let queue = std::sync::Arc::new(FairQueue::<u8>::new("test", 2));
        let worker = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.pop())
        };
        std::thread::sleep(Duration::from_millis(50));
        queue.close();
        assert_eq!(worker.join().unwrap(), None);
        assert!(matches!(
            queue.push("a", 1),
            Err(InferenceError::ShuttingDown)
        ));
    }
}
