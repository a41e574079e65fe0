//! What the run prints as it goes, and the machine it ran on.

use super::*;

pub(crate) fn print_figure(t: Test, f: &Figure) {
    let mut s = format!("{}: ", t.label());
    if let Some(e) = &f.error {
        let _ = write!(s, "failed: {e}");
    } else {
        let _ = write!(s, "{} {}", bench::fmt_opt(f.value, 3), unit(t));
        if let Some(o) = f.offered {
            let _ = write!(s, ", offered {o:.0} pps");
        }
        if let Some(l) = f.loss() {
            let _ = write!(s, ", loss {:.1} %", l * 100.0);
        }
        if let Some(r) = f.retransmits {
            let _ = write!(s, ", {r} retransmits");
        }
    }
    let _ = write!(
        s,
        "; CPU podwire {} s, QEMU {} s, rest {} s over {} s",
        bench::fmt_opt(f.podwire_cpu_s, 2),
        bench::fmt_opt(f.qemu_cpu_s, 2),
        bench::fmt_opt(f.rest_cpu_s, 2),
        bench::fmt_opt(f.wall_s, 1)
    );
    if !f.note.is_empty() {
        let _ = write!(s, "; {}", f.note);
    }
    println!("{s}");
}

pub(crate) fn unit(t: Test) -> &'static str {
    match t {
        Test::Tcp { .. } => "Gbit/s",
        Test::Pktgen { .. } | Test::TxOnly { .. } | Test::RxOnly { .. } => "pps",
        Test::Ping => "ms",
        Test::Rr { .. } => "trans/s",
    }
}

/// Facts about the machine and the software measured.
pub(crate) struct Machine {
    pub(crate) nproc: String,
    pub(crate) cpu: String,
    pub(crate) kernel: String,
    pub(crate) qemu: String,
    pub(crate) iperf3: String,
    pub(crate) testpmd: String,
    pub(crate) commit: String,
    pub(crate) date: String,
    pub(crate) guest_kernel: String,
    pub(crate) podwire_bin: String,
    /// the `--podwire-before` binary and the commit of the tree it lies in
    pub(crate) podwire_before: Option<String>,
    pub(crate) loadavg: String,
}

impl Machine {
    pub(crate) fn probe(image: &GuestImage, podwire_bin: &Path, before: Option<&Path>) -> Machine {
        let root = util::workspace_root();
        let root_s = root.display().to_string();
        let mut commit =
            bench::command_line_output(&["git", "-C", &root_s, "rev-parse", "--short", "HEAD"]);
        let branch = bench::command_line_output(&[
            "git",
            "-C",
            &root_s,
            "rev-parse",
            "--abbrev-ref",
            "HEAD",
        ]);
        commit = format!("{commit} (branch {branch})");
        let dirty = std::process::Command::new("git")
            .args([
                "-C",
                &root_s,
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
            ])
            .args([".", ":(exclude)perf", ":(exclude)docs"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if dirty {
            commit.push_str(" (podwire's sources had uncommitted changes)");
        }
        let qemu_bin = qemu::qemu_binary();
        let testpmd = match util::find_tool(&testpmd::binary()) {
            Some(p) => {
                let v =
                    bench::command_line_output(&["dpkg-query", "-W", "-f=${Version}", "dpdk-dev"]);
                format!("{} (dpdk-dev {v})", p.display())
            }
            None => "not installed".into(),
        };
        Machine {
            nproc: bench::command_line_output(&["nproc"]),
            cpu: bench::cpu_model(),
            kernel: bench::command_line_output(&["uname", "-r"]),
            qemu: bench::command_line_output(&[&qemu_bin, "--version"]),
            iperf3: bench::command_line_output(&["iperf3", "--version"]),
            testpmd,
            commit,
            date: bench::command_line_output(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]),
            guest_kernel: image.kernel_version.clone(),
            podwire_bin: podwire_bin
                .strip_prefix(&root)
                .unwrap_or(podwire_bin)
                .display()
                .to_string(),
            podwire_before: before.map(describe_binary),
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }

    pub(crate) fn one_line(&self) -> String {
        format!(
            "{} × {}, kernel {}, {}, podwire {}, loadavg {}",
            self.nproc, self.cpu, self.kernel, self.qemu, self.commit, self.loadavg
        )
    }
}

/// A podwire binary by path and, when it lies in a git work tree (its `target/`), that tree's
/// commit: which build a `--podwire-before` column measured.
fn describe_binary(bin: &Path) -> String {
    let dir = bin.parent().unwrap_or(Path::new("/")).display().to_string();
    let commit = bench::command_line_output(&["git", "-C", &dir, "rev-parse", "--short", "HEAD"]);
    format!("commit {commit}, `{}`", bin.display())
}
