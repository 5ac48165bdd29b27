//! A bounded job queue that is fair between tenants: workers take jobs round-robin across the
//! tenants that have any waiting, so one creator's burst cannot starve another's visitors. A
//! full queue refuses at once with an estimate of when to retry, instead of piling up.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::InferenceError;

pub struct FairQueue<J> {
    name: &'static str,
    capacity: usize,
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
        FairQueue {
            name,
            capacity: capacity.max(1),
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
        if state.len >= self.capacity {
            // Everything ahead must finish first; one worker runs them one at a time.
            let wait = state.average_job.mul_f64(state.len as f64);
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
        match queue.push("c", 3) {
            Err(InferenceError::Overloaded { retry_after }) => {
                assert!(retry_after >= Duration::from_secs(1))
            }
            other => panic!("expected overload, got {other:?}"),
        }
        queue.pop();
        queue.push("c", 3).expect("room again after a pop");
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
