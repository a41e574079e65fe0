//! Event and drop counters, declared once.
//!
//! # Theory of operation
//!
//! Every counter set in podwire (the device's, the switch's, the NAT's, the link control plane's,
//! the DHCP servers') is declared with [`counters!`](crate::counters!): one line per counter, its
//! field name *is* its name in logs, the status output and metrics, its doc comment is its help
//! text, and its [`CounterKind`] says what it counts. A set may also declare its drop-reason enum
//! in the same block: each variant names the counter it bumps, so the enum, the counter field,
//! the name string and the mapping from one to the other are written once.
//!
//! The macro generates the struct (one [`Counter`] per field, or a plain `u64` for
//! single-threaded owners that count through `&mut self`), a `DESCS` table of
//! [`CounterDesc`], and an implementation of [`CounterSet`] through which any set can be listed as
//! `(name, help, kind, value)` — for the one-line summary ([`summary_of`]), a status command, or a
//! Prometheus exporter — without naming its fields.
//!
//! [`Counter`]s are relaxed atomics: the dataplane increments them without locks, readers take a
//! consistent-enough snapshot for metrics. The first occurrence of each drop is logged once
//! ([`warn_once!`](crate::warn_once!)) so that a misbehaving guest cannot flood the log.

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

/// What a counter counts, for metric types and for telling drops from traffic in a status view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterKind {
    /// Events (frames, replies, flows opened...).
    Count,
    /// Bytes.
    Bytes,
    /// Packets or frames dropped for one reason.
    Drop,
}

/// A counter's name, help text and kind, as declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterDesc {
    /// The field name: a lower-case identifier, unique within its set.
    pub name: &'static str,
    /// The doc comment as written (lines joined; see [`CounterDesc::help`]).
    pub raw_help: &'static str,
    pub kind: CounterKind,
}

impl CounterDesc {
    /// The doc comment, trimmed: one line of help for a metric.
    pub fn help(&self) -> &'static str {
        self.raw_help.trim()
    }
}

/// Storage of one counter: an atomic [`Counter`] or a plain `u64` owned by a single thread.
pub trait CounterValue {
    fn value(&self) -> u64;
}

impl CounterValue for Counter {
    fn value(&self) -> u64 {
        self.get()
    }
}

impl CounterValue for u64 {
    fn value(&self) -> u64 {
        *self
    }
}

/// Any set declared with [`counters!`](crate::counters!): its counters listed in declaration
/// order, without naming fields.
pub trait CounterSet {
    /// Name, help and kind of every counter, in declaration order.
    fn descs(&self) -> &'static [CounterDesc];

    /// Calls `f` with every counter's description and current value, in declaration order.
    fn visit(&self, f: &mut dyn FnMut(&'static CounterDesc, u64));

    /// `(description, value)` for every counter, zeros included.
    fn samples(&self) -> Vec<(&'static CounterDesc, u64)> {
        let mut out = Vec::with_capacity(self.descs().len());
        self.visit(&mut |d, v| out.push((d, v)));
        out
    }

    /// The value of the counter called `name`, if the set has one.
    fn value_of(&self, name: &str) -> Option<u64> {
        let mut found = None;
        self.visit(&mut |d, v| {
            if d.name == name {
                found = Some(v);
            }
        });
        found
    }

    /// `name=value` for every non-zero counter, space-separated.
    fn summary(&self) -> String {
        let mut out = String::new();
        self.visit(&mut |d, v| push_nonzero(&mut out, "", d, v));
        out
    }
}

/// `prefixname=value` for every non-zero counter of every set, space-separated: one log line.
pub fn summary_of(sets: &[(&str, &dyn CounterSet)]) -> String {
    let mut out = String::new();
    for (prefix, set) in sets {
        set.visit(&mut |d, v| push_nonzero(&mut out, prefix, d, v));
    }
    out
}

fn push_nonzero(out: &mut String, prefix: &str, desc: &CounterDesc, value: u64) {
    if value == 0 {
        return;
    }
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(prefix);
    out.push_str(desc.name);
    out.push('=');
    out.push_str(&value.to_string());
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

/// Declares a counter set, and optionally its drop-reason enum, once.
///
/// ```
/// podwire_frame::counters! {
///     /// What the example counts.
///     pub struct ExampleCounters {
///         /// Frames seen.
///         frames: Count,
///         /// Bytes seen.
///         bytes: Bytes,
///         /// Frames dropped because they were too long.
///         drop_too_long: Drop,
///     }
///     /// Why a frame was not answered; each variant bumps the counter after `=>`.
///     #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
///     pub enum ExampleDrop {
///         /// Frames shorter than their headers.
///         #[error("truncated")]
///         Truncated => drop_truncated,
///         /// Frames from a source podwire does not serve.
///         #[error("bad source {0}")]
///         BadSource(u32) => drop_bad_source,
///     }
/// }
/// use podwire_frame::CounterSet;
/// let c = ExampleCounters::default();
/// c.frames.inc();
/// ExampleDrop::BadSource(7).counter(&c).inc();
/// assert_eq!(c.summary(), "frames=1 drop_bad_source=1");
/// assert_eq!(ExampleDrop::Truncated.name(), "drop_truncated");
/// assert_eq!(ExampleDrop::COUNTERS, ["drop_truncated", "drop_bad_source"]);
/// assert_eq!(ExampleCounters::DESCS[0].help(), "Frames seen.");
/// ```
///
/// Each counter needs a doc comment (its help text) and a kind: `Count`, `Bytes` or `Drop`
/// ([`CounterKind`]). Counters are [`Counter`]s unless the struct says `: u64` after its name
/// (plain integers for an owner that counts through `&mut self`). The enum's attributes are the
/// caller's (the `#[error]` lines need `thiserror::Error` derived); variants carry at most a few
/// fields, and the counters they name join the struct with kind `Drop`.
#[macro_export]
macro_rules! counters {
    (
        $(#[$sattr:meta])*
        $svis:vis struct $Set:ident : $store:ty {
            $( $(#[doc = $fdoc:literal])+ $field:ident : $kind:ident ),* $(,)?
        }
        $(
            $(#[$eattr:meta])*
            $evis:vis enum $Drop:ident {
                $(
                    $(#[doc = $vdoc:literal])+
                    #[error($($msg:tt)+)]
                    $var:ident $(( $($payload:ty),+ ))? => $dfield:ident
                ),* $(,)?
            }
        )?
    ) => {
        $(#[$sattr])*
        #[derive(Debug, Default)]
        $svis struct $Set {
            $( $(#[doc = $fdoc])+ pub $field: $store, )*
            $($( $(#[doc = $vdoc])+ pub $dfield: $store, )*)?
        }

        impl $Set {
            /// Name, help and kind of every counter, in declaration order.
            pub const DESCS: &'static [$crate::counters::CounterDesc] = &[
                $(
                    $crate::counters::CounterDesc {
                        name: stringify!($field),
                        raw_help: concat!($($fdoc),+),
                        kind: $crate::counters::CounterKind::$kind,
                    },
                )*
                $($(
                    $crate::counters::CounterDesc {
                        name: stringify!($dfield),
                        raw_help: concat!($($vdoc),+),
                        kind: $crate::counters::CounterKind::Drop,
                    },
                )*)?
            ];
        }

        impl $crate::counters::CounterSet for $Set {
            fn descs(&self) -> &'static [$crate::counters::CounterDesc] {
                Self::DESCS
            }

            fn visit(&self, f: &mut dyn FnMut(&'static $crate::counters::CounterDesc, u64)) {
                let values = [
                    $( $crate::counters::CounterValue::value(&self.$field), )*
                    $($( $crate::counters::CounterValue::value(&self.$dfield), )*)?
                ];
                for (desc, value) in Self::DESCS.iter().zip(values) {
                    f(desc, value);
                }
            }
        }

        $(
            $(#[$eattr])*
            $evis enum $Drop {
                $( $(#[doc = $vdoc])+ #[error($($msg)+)] $var $(( $($payload),+ ))?, )*
            }

            #[allow(dead_code)]
            impl $Drop {
                /// The counters the reasons bump, in declaration order (one per reason).
                pub const COUNTERS: &'static [&'static str] = &[$( stringify!($dfield), )*];

                /// The counter this reason bumps.
                pub fn counter<'a>(&self, set: &'a $Set) -> &'a $store {
                    match self {
                        $( Self::$var { .. } => &set.$dfield, )*
                    }
                }

                /// The counter this reason bumps, for a set counted through `&mut`.
                pub fn counter_mut<'a>(&self, set: &'a mut $Set) -> &'a mut $store {
                    match self {
                        $( Self::$var { .. } => &mut set.$dfield, )*
                    }
                }

                /// The name of the counter this reason bumps.
                pub fn name(&self) -> &'static str {
                    match self {
                        $( Self::$var { .. } => stringify!($dfield), )*
                    }
                }
            }
        )?
    };
    (
        $(#[$sattr:meta])*
        $svis:vis struct $Set:ident { $($body:tt)* }
        $($rest:tt)*
    ) => {
        $crate::counters! {
            $(#[$sattr])*
            $svis struct $Set : $crate::Counter { $($body)* }
            $($rest)*
        }
    };
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

    crate::counters! {
        /// A set for the tests.
        struct TestCounters {
            /// Things seen.
            seen: Count,
            /// Bytes moved,
            /// over two lines.
            moved: Bytes,
            /// Things dropped without an enum.
            drop_plain: Drop,
        }
        /// Reasons for the tests.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
        enum TestDrop {
            /// Short things.
            #[error("short")]
            Short => drop_short,
            /// Things from the wrong place.
            #[error("from {0} of {1}")]
            From(u8, u16) => drop_from,
        }
    }

    crate::counters! {
        /// A plain-integer set.
        #[derive(Clone, PartialEq, Eq)]
        struct PlainCounters: u64 {
            /// Events.
            events: Count,
        }
    }

    #[test]
    fn declaration_order_names_help_and_kinds() {
        let names: Vec<_> = TestCounters::DESCS.iter().map(|d| d.name).collect();
        assert_eq!(
            names,
            ["seen", "moved", "drop_plain", "drop_short", "drop_from"]
        );
        assert_eq!(
            TestCounters::DESCS[1].help(),
            "Bytes moved, over two lines."
        );
        assert_eq!(TestCounters::DESCS[1].kind, CounterKind::Bytes);
        assert_eq!(TestCounters::DESCS[3].kind, CounterKind::Drop);
        assert_eq!(
            TestCounters::DESCS[4].help(),
            "Things from the wrong place."
        );
    }

    #[test]
    fn drop_reasons_bump_their_own_counter() {
        let c = TestCounters::default();
        TestDrop::From(1, 2).counter(&c).inc();
        TestDrop::From(3, 4).counter(&c).inc();
        TestDrop::Short.counter(&c).inc();
        assert_eq!((c.drop_from.get(), c.drop_short.get()), (2, 1));
        assert_eq!(TestDrop::From(1, 2).name(), "drop_from");
        assert_eq!(TestDrop::From(1, 2).to_string(), "from 1 of 2");
        assert_eq!(c.value_of("drop_from"), Some(2));
        assert_eq!(c.value_of("nothing"), None);
    }

    #[test]
    fn samples_list_every_counter_with_its_value() {
        let c = TestCounters::default();
        c.moved.add(1500);
        let samples = c.samples();
        assert_eq!(samples.len(), TestCounters::DESCS.len());
        assert_eq!(samples[1].0.name, "moved");
        assert_eq!(samples[1].1, 1500);
        assert!(samples
            .iter()
            .filter(|s| s.0.name != "moved")
            .all(|s| s.1 == 0));
    }

    #[test]
    fn summaries_list_only_nonzero_counters_with_prefixes() {
        let c = TestCounters::default();
        assert_eq!(c.summary(), "");
        c.seen.inc();
        c.drop_short.add(2);
        assert_eq!(c.summary(), "seen=1 drop_short=2");
        let mut p = PlainCounters::default();
        p.events += 3;
        assert_eq!(
            summary_of(&[("a_", &c), ("b_", &p)]),
            "a_seen=1 a_drop_short=2 b_events=3"
        );
        let mut q = p.clone();
        q.events += 1;
        assert_ne!(p, q);
    }

    #[test]
    fn nonzero_summary_skips_zeros() {
        assert_eq!(nonzero_summary(&[("a", 0), ("b", 2)]), "b=2");
    }

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
