//! Where the ping-pong's three parties run: the frontend (our driver, standing in for the guest's
//! vCPU), the backend under test and the far host's echo server.
//!
//! On a machine with few CPUs the scheduler's placement decides most of a round trip: a wake-up
//! that finds its CPU idle costs an idle exit (on a VM without guest halt-polling, a halt and
//! an inter-processor interrupt), one that finds it busy only a queue insertion. Left to the
//! scheduler, the same backend can land in a different placement from one round to the next and
//! its median moves by half. Pinning each party to a CPU set fixes the placement, so that the
//! backends are compared on the same one; the placement used is part of the report.
//!
//! Affinity is set per thread (`sched_setaffinity` on every task of the process); threads a
//! process creates later inherit their creator's, so pinning right after start covers them.

use anyhow::{bail, Context, Result};

/// A set of CPUs, written `0`, `1` or `0,1`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cpus(pub Vec<usize>);

impl std::str::FromStr for Cpus {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let cpus = s
            .split(',')
            .map(|c| c.trim().parse::<usize>().map_err(|e| format!("`{c}`: {e}")))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if cpus.is_empty() || cpus.iter().any(|&c| c >= libc::CPU_SETSIZE as usize) {
            return Err(format!("`{s}`: not a list of CPU numbers"));
        }
        Ok(Cpus(cpus))
    }
}

/// Which CPUs each party may run on; `None` leaves it to the scheduler.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Placement {
    pub frontend: Option<Cpus>,
    pub backend: Option<Cpus>,
    pub far: Option<Cpus>,
}

/// Pins every thread of process `pid` to `cpus`.
pub fn pin_process(pid: u32, cpus: &Cpus) -> Result<()> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of {pid}"))?;
    for t in tasks {
        let tid: i32 = t?
            .file_name()
            .to_string_lossy()
            .parse()
            .context("a task that is not a number")?;
        pin_thread(tid, cpus).with_context(|| format!("pinning thread {tid} of {pid}"))?;
    }
    Ok(())
}

/// Pins one thread (0: the calling one).
pub fn pin_thread(tid: i32, cpus: &Cpus) -> Result<()> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in &cpus.0 {
        // SAFETY: `c` < CPU_SETSIZE (checked when parsed).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!("1".parse::<Cpus>().unwrap(), Cpus(vec![1]));
        assert_eq!("0, 1".parse::<Cpus>().unwrap(), Cpus(vec![0, 1]));
        assert!("".parse::<Cpus>().is_err());
        assert!("a".parse::<Cpus>().is_err());
        assert!("100000".parse::<Cpus>().is_err());
    }

    #[test]
    fn a_pinned_thread_runs_where_it_was_pinned() {
        let cpus = Cpus(vec![0]);
        let h = std::thread::spawn(move || {
            pin_thread(0, &cpus).unwrap();
            // SAFETY: sched_getcpu has no preconditions.
            (0..1000).map(|_| unsafe { libc::sched_getcpu() }).max()
        });
        assert_eq!(h.join().unwrap(), Some(0));
    }
}
