//! Small helpers shared by the harness: paths, unique names, deadline waits,
//! running commands, temporary directories.

use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("perf/ has a parent")
        .to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Directory for logs of processes and guest consoles
/// (`<target>/podwire-perf/logs`), created on first use.
pub fn log_dir() -> PathBuf {
    let d = target_dir().join("podwire-perf").join("logs");
    let _ = std::fs::create_dir_all(&d);
    d
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n == 0 {
        return "0".into();
    }
    let mut v = Vec::new();
    while n > 0 {
        v.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    v.reverse();
    String::from_utf8(v).unwrap()
}

fn parse_base36(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 12 {
        return None;
    }
    let mut n: u64 = 0;
    for c in s.chars() {
        n = n * 36 + c.to_digit(36)? as u64;
    }
    Some(n)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short id unique on this machine while this process lives:
/// `<pid in base36>-<counter in base36>` (e.g. `2k1x-0`), at most 9 chars
/// for any Linux pid (< 2^22) and the first 46656 ids of a process.
pub fn unique_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}", base36(std::process::id() as u64), base36(n as u64))
}

/// The pid an id made by [`unique_id`] belongs to.
pub fn unique_id_pid(id: &str) -> Option<u32> {
    let (pid, n) = id.split_once('-')?;
    parse_base36(n)?;
    parse_base36(pid).and_then(|p| u32::try_from(p).ok())
}

/// Polls `cond` until it returns `Ok(true)`, failing after `timeout`.
/// Errors from `cond` abort the wait. The poll interval starts at 2 ms and
/// backs off to 50 ms.
pub fn wait_until<F>(what: &str, timeout: Duration, mut cond: F) -> Result<()>
where
    F: FnMut() -> Result<bool>,
{
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(2);
    loop {
        if cond().with_context(|| format!("while waiting for {what}"))? {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(interval.min(deadline - now));
        interval = (interval * 2).min(Duration::from_millis(50));
    }
}

/// Renders a command line for messages.
pub fn cmdline(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
            let _ = write!(s, " '{}'", a.replace('\'', "'\\''"));
        } else {
            let _ = write!(s, " {a}");
        }
    }
    s
}

/// Runs `cmd` to completion; fails (with its stderr) unless it exits 0.
/// Returns its stdout.
pub fn run_cmd(cmd: &mut Command) -> Result<String> {
    let out = run_cmd_output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            cmdline(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` to completion and returns its output whatever its exit status.
pub fn run_cmd_output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", cmdline(cmd)))
}

/// Runs a program given as argv, failing unless it exits 0; returns stdout.
pub fn run(argv: &[&str]) -> Result<String> {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    run_cmd(&mut cmd)
}

/// Whether an executable named `name` is on PATH (or is an existing path).
pub fn have_tool(name: &str) -> bool {
    find_tool(name).is_some()
}

/// The path of executable `name` on PATH (also searching the sbin dirs).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Names of the tools in `tools` that are not installed.
pub fn missing_tools(tools: &[&str]) -> Vec<String> {
    tools
        .iter()
        .filter(|t| !have_tool(t))
        .map(|t| t.to_string())
        .collect()
}

/// Whether this process runs as root (needed for namespaces, taps, QEMU's
/// vhost-user memory sharing is fine without, but the harness assumes root).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Fails unless running as root.
pub fn require_root() -> Result<()> {
    if !is_root() {
        bail!("this needs root (network namespaces, /etc/netns, taps)");
    }
    Ok(())
}

/// A directory removed (recursively) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/podwire-perf-<unique id>-<tag>`.
    pub fn new(tag: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("podwire-perf-{}-{tag}", unique_id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(name)`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Last `max` bytes of `s`, cut at a char boundary, with a marker if cut.
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {} bytes cut ...]{}", start, &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ids_are_short_distinct_and_carry_the_pid() {
        let a = unique_id();
        let b = unique_id();
        assert_ne!(a, b);
        assert!(a.len() <= 9, "{a}");
        assert_eq!(unique_id_pid(&a), Some(std::process::id()));
        assert_eq!(unique_id_pid("zzzz"), None);
        assert_eq!(unique_id_pid("a-"), None);
        assert_eq!(unique_id_pid("1a-!"), None);
        // the largest Linux pid still fits
        assert_eq!(base36(4_194_304).len(), 5);
        assert_eq!(parse_base36(&base36(4_194_304)), Some(4_194_304));
    }

    #[test]
    fn wait_until_times_out_and_succeeds() {
        let mut n = 0;
        wait_until("third poll", Duration::from_secs(5), || {
            n += 1;
            Ok(n >= 3)
        })
        .unwrap();
        assert_eq!(n, 3);
        let t = Instant::now();
        let e = wait_until("never", Duration::from_millis(30), || Ok(false)).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert!(e.to_string().contains("never"), "{e}");
        let e = wait_until("error", Duration::from_secs(5), || bail!("boom")).unwrap_err();
        assert!(format!("{e:#}").contains("boom"));
    }

    #[test]
    fn run_reports_failures() {
        assert_eq!(run(&["sh", "-c", "echo hi"]).unwrap(), "hi\n");
        let e = run(&["sh", "-c", "echo oops >&2; exit 3"]).unwrap_err();
        assert!(e.to_string().contains("oops"), "{e}");
        assert!(run(&["/nonexistent/tool"]).is_err());
    }

    #[test]
    fn cmdline_quotes() {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", "a b", "x'y"]);
        assert_eq!(cmdline(&c), r#"ip netns exec 'a b' 'x'\''y'"#);
    }

    #[test]
    fn tail_cuts_at_char_boundary() {
        assert_eq!(tail("abc", 5), "abc");
        let t = tail("ééé", 3);
        assert!(t.ends_with('é') && t.starts_with("[..."), "{t}");
    }

    #[test]
    fn temp_dir_is_removed() {
        let p;
        {
            let d = TempDir::new("t").unwrap();
            p = d.path().to_path_buf();
            std::fs::write(d.join("f"), b"x").unwrap();
            assert!(p.exists());
        }
        assert!(!p.exists());
    }

    #[test]
    fn finds_sh() {
        assert!(have_tool("sh"));
        assert!(!have_tool("definitely-not-a-tool-podwire"));
        assert_eq!(missing_tools(&["sh", "nope-podwire"]), vec!["nope-podwire"]);
    }
}
