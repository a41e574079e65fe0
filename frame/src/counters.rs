//! Drop and traffic counters shared between the dataplane thread and whoever reports status.
//!
//! Counters are relaxed atomics: the dataplane increments them without locks, readers take a
//! consistent-enough snapshot for metrics. Every reason a frame can be dropped has its own counter,
//! and the first occurrence of each is logged once ([`warn_once!`]) so that a misbehaving guest
//! cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing event count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// `name=value` for every non-zero pair, space-separated: one log line of counters.
pub fn nonzero_summary(pairs: &[(&str, u64)]) -> String {
    let mut out = String::new();
    for (name, value) in pairs.iter().filter(|(_, v)| *v != 0) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&format!("{name}={value}"));
    }
    out
}

/// Logs a warning the first time this call site is reached, then stays quiet.
#[macro_export]
macro_rules! warn_once {
    ($($arg:tt)*) => {{
        static DONE: ::std::sync::atomic::AtomicBool = ::std::sync::atomic::AtomicBool::new(false);
        if !DONE.swap(true, ::std::sync::atomic::Ordering::Relaxed) {
            ::tracing::warn!("{} (logged once; see counters)", format_args!($($arg)*));
        }
    }};
}
