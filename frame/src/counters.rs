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

/// How many lines one call site of [`log_limited!`] may log per [`LOG_WINDOW_MS`].
pub const LOG_BURST: u32 = 5;
/// The window of [`LOG_BURST`], in milliseconds.
pub const LOG_WINDOW_MS: u64 = 10_000;

/// Milliseconds since the first call in this process: a clock that fits an atomic.
pub fn monotonic_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// The state behind one rate-limited log line: at most [`LOG_BURST`] lines per
/// [`LOG_WINDOW_MS`], and the first line of each window says how many were left out before it.
/// Every log line a guest, a frontend or a remote peer can trigger at will goes through one.
#[derive(Debug)]
pub struct RateLimit {
    window_start: AtomicU64,
    logged: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub const fn new() -> RateLimit {
        RateLimit {
            window_start: AtomicU64::new(0),
            logged: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged at `now_ms`; if so, how many were suppressed before it.
    pub fn check_at(&self, now_ms: u64) -> Option<u64> {
        let start = self.window_start.load(Ordering::Relaxed);
        if self.logged.load(Ordering::Relaxed) > 0 && now_ms.saturating_sub(start) >= LOG_WINDOW_MS
        {
            self.window_start.store(now_ms, Ordering::Relaxed);
            self.logged.store(0, Ordering::Relaxed);
        }
        if self.logged.fetch_add(1, Ordering::Relaxed) == 0 {
            self.window_start.store(now_ms, Ordering::Relaxed);
        }
        if self.logged.load(Ordering::Relaxed) > u64::from(LOG_BURST) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }

    /// [`RateLimit::check_at`] now.
    pub fn check(&self) -> Option<u64> {
        self.check_at(monotonic_ms())
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new()
    }
}

/// Logs at `level` (a `tracing` macro name: `info`, `warn`, `debug`) through a [`RateLimit`]
/// of this call site: for log lines whose cause is guest, frontend or peer input.
#[macro_export]
macro_rules! log_limited {
    ($level:ident, $($arg:tt)*) => {{
        static LIMIT: $crate::counters::RateLimit = $crate::counters::RateLimit::new();
        if let Some(suppressed) = LIMIT.check() {
            if suppressed > 0 {
                ::tracing::$level!("{} ({suppressed} similar lines suppressed)", format_args!($($arg)*));
            } else {
                ::tracing::$level!($($arg)*);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_a_burst_per_window_and_counts_the_rest() {
        let r = RateLimit::new();
        let t0 = 1_000;
        for _ in 0..LOG_BURST {
            assert_eq!(r.check_at(t0), Some(0));
        }
        for i in 0..100 {
            assert_eq!(r.check_at(t0 + i), None);
        }
        assert_eq!(r.check_at(t0 + LOG_WINDOW_MS - 1), None);
        assert_eq!(
            r.check_at(t0 + LOG_WINDOW_MS),
            Some(101),
            "reports what it left out"
        );
        assert_eq!(r.check_at(t0 + LOG_WINDOW_MS), Some(0));
    }
}
