//! RLIMIT_NOFILE against the flow limits, checked once at start-up.
//!
//! # Theory of operation
//!
//! Every flow is a socket, so `--max-flows` is only a promise if the process may hold that many
//! file descriptors. The NAT's one flow table admits up to `max_flows` flows of every kind
//! together (TCP connections either way, UDP ports, ping sessions), each one socket, so the
//! worst case is [`FDS_PER_FLOW`] per flow, plus one listener per forwarded port, plus
//! [`BASE_FDS`] for everything else (the vhost-user socket and session, the frontend's memory
//! regions, eventfds, epoll, timers).
//!
//! At start-up the soft limit is raised as far as needed (to the hard limit, which a root
//! podwire may raise too, before it drops its privileges). If the limit still falls short,
//! `--max-flows` is lowered to what fits, with one warning line; if not even one flow fits,
//! podwire refuses to start. A flow the table admits then never fails for want of a descriptor
//! (EMFILE), which would otherwise turn into resets and drops with no clear cause.

use std::io;

/// Descriptors podwire holds apart from flows and listeners. The frontend's memory regions
/// dominate: vhost-user allows up to 509 with memory slots, plus kick/call/error eventfds per
/// queue, the sockets and podwire's own epoll, eventfd and timerfd.
pub const BASE_FDS: u64 = 1024;
/// Descriptors per unit of `--max-flows`: one socket per flow, whatever its kind (the one
/// flow table counts every kind against the same limit).
pub const FDS_PER_FLOW: u64 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FdLimitError {
    #[error(
        "RLIMIT_NOFILE allows {limit} open files, too few for even one flow (needs at least \
         {need}): raise the hard limit (ulimit -Hn)"
    )]
    TooLow { limit: u64, need: u64 },
    #[error("cannot read RLIMIT_NOFILE: {0}")]
    Get(String),
}

/// What to do about the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The soft and hard limit to set (unchanged when they suffice).
    pub soft: u64,
    pub hard: u64,
    /// The flow limit that fits.
    pub max_flows: usize,
}

/// Descriptors needed for `max_flows` and `listeners` forwarded ports.
pub fn needed(max_flows: usize, listeners: usize) -> u64 {
    BASE_FDS + listeners as u64 + FDS_PER_FLOW * max_flows as u64
}

/// Plans the limit for a process whose limit is `soft`/`hard` and which may raise its hard
/// limit up to `raisable` (the kernel's `fs.nr_open` for root, `hard` otherwise).
pub fn plan(
    soft: u64,
    hard: u64,
    raisable: u64,
    max_flows: usize,
    listeners: usize,
) -> Result<Plan, FdLimitError> {
    let need = needed(max_flows, listeners);
    if soft >= need {
        return Ok(Plan {
            soft,
            hard,
            max_flows,
        });
    }
    let ceiling = hard.max(raisable);
    if ceiling >= need {
        return Ok(Plan {
            soft: need,
            hard: hard.max(need),
            max_flows,
        });
    }
    let spare = ceiling.saturating_sub(BASE_FDS + listeners as u64);
    let fits = (spare / FDS_PER_FLOW) as usize;
    if fits == 0 {
        return Err(FdLimitError::TooLow {
            limit: ceiling,
            need: needed(1, listeners),
        });
    }
    Ok(Plan {
        soft: ceiling,
        hard: ceiling,
        max_flows: fits,
    })
}

/// Applies [`plan`] to this process; returns the flow limit to use and, if it was lowered,
/// the one line to log (the caller logs it once start-up has succeeded, so that a start-up
/// failure stays one line).
pub fn ensure(max_flows: usize, listeners: usize) -> Result<(usize, Option<String>), FdLimitError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(FdLimitError::Get(io::Error::last_os_error().to_string()));
    }
    let raisable = if may_raise_hard_limit() {
        nr_open().unwrap_or(lim.rlim_max)
    } else {
        lim.rlim_max
    };
    let p = plan(lim.rlim_cur, lim.rlim_max, raisable, max_flows, listeners)?;
    if (p.soft, p.hard) != (lim.rlim_cur, lim.rlim_max) {
        let new = libc::rlimit {
            rlim_cur: p.soft,
            rlim_max: p.hard,
        };
        // SAFETY: setrlimit from a valid struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            // Raising the hard limit was refused after all: the old hard limit is the ceiling.
            let p = plan(
                lim.rlim_cur,
                lim.rlim_max,
                lim.rlim_max,
                max_flows,
                listeners,
            )?;
            let new = libc::rlimit {
                rlim_cur: p.soft,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: setrlimit from a valid struct, within the hard limit.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) };
            return Ok(report(p, max_flows, listeners));
        }
    }
    Ok(report(p, max_flows, listeners))
}

fn report(p: Plan, asked: usize, listeners: usize) -> (usize, Option<String>) {
    let line = (p.max_flows < asked).then(|| {
        format!(
            "RLIMIT_NOFILE allows {} open files: --max-flows lowered from {asked} to {} \
             (raise the hard limit to {} to keep {asked})",
            p.hard,
            p.max_flows,
            needed(asked, listeners)
        )
    });
    (p.max_flows, line)
}

/// Whether this process holds CAP_SYS_RESOURCE (root, usually).
fn may_raise_hard_limit() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// The kernel's ceiling for any process's RLIMIT_NOFILE.
fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sufficient_soft_limit_is_left_alone() {
        let need = needed(100, 2);
        assert_eq!(
            plan(need, need, need, 100, 2),
            Ok(Plan {
                soft: need,
                hard: need,
                max_flows: 100
            })
        );
    }

    #[test]
    fn the_soft_limit_is_raised_within_the_hard_limit() {
        let p = plan(1024, 1 << 20, 1 << 20, 65536, 0).unwrap();
        assert_eq!(p.soft, needed(65536, 0));
        assert_eq!((p.hard, p.max_flows), (1 << 20, 65536));
    }

    #[test]
    fn root_raises_the_hard_limit_up_to_nr_open() {
        let p = plan(1024, 20000, 1 << 20, 65536, 0).unwrap();
        assert_eq!(
            (p.soft, p.hard, p.max_flows),
            (needed(65536, 0), needed(65536, 0), 65536)
        );
    }

    #[test]
    fn too_low_a_hard_limit_lowers_the_flow_limit_to_what_fits() {
        let p = plan(1024, 20000, 20000, 65536, 10).unwrap();
        assert_eq!(p.soft, 20000);
        assert_eq!(
            p.max_flows,
            ((20000 - BASE_FDS - 10) / FDS_PER_FLOW) as usize
        );
        assert!(needed(p.max_flows, 10) <= 20000);
    }

    #[test]
    fn no_room_for_a_single_flow_is_refused() {
        assert!(matches!(
            plan(256, 256, 256, 65536, 0),
            Err(FdLimitError::TooLow { limit: 256, .. })
        ));
    }

    /// The real process: afterwards the soft limit covers what the returned flow limit needs.
    #[test]
    fn ensure_leaves_room_for_the_flows_it_admits() {
        let (flows, _) = ensure(1000, 4).unwrap();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit into a valid struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert!(
            lim.rlim_cur >= needed(flows, 4),
            "{} < {}",
            lim.rlim_cur,
            needed(flows, 4)
        );
    }
}
