//! How the control thread gets work done on the switch without ever blocking the dataplane.
//!
//! # Theory of operation
//!
//! A control request that needs the switch (a status snapshot, the flow list, a forward to
//! open or close) is posted here as one job. Whoever gets to it first runs it:
//!
//! - the dataplane thread, at the end of its next pass (`poll_host`, `tx_batch_done`), where it
//!   already holds the switch — one relaxed atomic load per pass when there is nothing to do;
//! - or the control thread itself, if it manages to *try*-lock the switch, which is what happens
//!   when the dataplane is idle and makes no passes.
//!
//! So a busy dataplane answers within one pass, an idle one within a try-lock, and the dataplane
//! never waits for a client: at most it runs one bounded job. Jobs are serialised (one at a
//! time), so the slot holds at most one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::switch::Switch;

type Job = Box<dyn FnOnce(&mut Switch) + Send>;

#[derive(Default)]
pub struct Mailbox {
    pending: AtomicBool,
    job: Mutex<Option<Job>>,
    /// Serialises posters.
    turn: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Mailbox {
    /// Runs the posted job, if any. Called by whoever holds the switch.
    #[inline]
    pub fn run_pending(&self, switch: &mut Switch) {
        if self.pending.load(Ordering::Acquire) {
            self.take_and_run(switch);
        }
    }

    #[cold]
    fn take_and_run(&self, switch: &mut Switch) {
        let job = lock(&self.job).take();
        self.pending.store(false, Ordering::Release);
        if let Some(job) = job {
            job(switch);
        }
    }

    /// Runs `f` on the switch, by the dataplane or by `try_lock` (see the module comment).
    /// Gives up after `budget` if neither has picked the job up (a dataplane stuck in one
    /// pass): the job is withdrawn and `None` returned.
    pub fn run<'a, R: Send + 'static>(
        &self,
        try_lock: &dyn Fn() -> Option<crate::control::SwitchGuard<'a>>,
        budget: Duration,
        f: impl FnOnce(&mut Switch) -> R + Send + 'static,
    ) -> Option<R> {
        let _turn = lock(&self.turn);
        let (tx, rx) = mpsc::sync_channel(1);
        *lock(&self.job) = Some(Box::new(move |sw: &mut Switch| {
            let _ = tx.send(f(sw));
        }));
        self.pending.store(true, Ordering::Release);
        let deadline = Instant::now() + budget;
        loop {
            if let Ok(r) = rx.recv_timeout(Duration::from_micros(200)) {
                return Some(r);
            }
            if let Some(mut guard) = try_lock() {
                self.take_and_run(guard.inner_mut());
            } else if Instant::now() >= deadline {
                let withdrawn = lock(&self.job).take().is_some();
                if withdrawn {
                    self.pending.store(false, Ordering::Release);
                    return None;
                }
                // Taken just now: the dataplane is running it, the answer is on its way.
                return rx.recv().ok();
            }
        }
    }
}
