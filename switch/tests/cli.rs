//! The binary's command line: bad options and unusable values end podwire with one clear line
//! and a non-zero status, before anything is bound.

use std::process::Command;

fn podwire(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_podwire"))
        .args(args)
        .output()
        .expect("run podwire");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_failure(args: &[&str], needle: &str) {
    let (code, stderr) = podwire(args);
    assert_ne!(code, 0, "{args:?} must fail");
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line for {args:?}: {stderr:?}"
    );
    assert!(stderr.starts_with("podwire: "), "{stderr:?}");
    assert!(stderr.contains(needle), "{args:?}: {stderr:?}");
}

#[test]
fn bad_options_and_values_fail_with_one_clear_line() {
    let sock = std::env::temp_dir().join(format!("podwire-cli-{}.sock", std::process::id()));
    let s = sock.to_str().unwrap();
    assert_one_line_failure(&["--socket", s, "--bogus"], "--bogus");
    assert_one_line_failure(&[], "--socket");
    assert_one_line_failure(&["--socket", s, "--mtu", "70000"], "70000");
    assert_one_line_failure(&["--socket", s, "--mac", "zz:00:00:00:00:01"], "zz");
    assert_one_line_failure(
        &[
            "--socket",
            s,
            "--interface",
            "lo",
            "--guest-cidr",
            "198.19.0.0/31",
        ],
        "too small",
    );
    assert_one_line_failure(
        &[
            "--socket",
            s,
            "--interface",
            "lo",
            "--guest-cidr",
            "nonsense",
        ],
        "nonsense",
    );
    assert_one_line_failure(
        &["--socket", s, "--interface", "nonexistent0"],
        "nonexistent0",
    );
    assert_one_line_failure(
        &["--socket", s, "--interface", "lo", "--guest-cidr", "pod"],
        "no default gateway",
    );
    assert!(!sock.exists(), "nothing was bound");
}

#[test]
fn help_and_version_succeed() {
    let (code, _) = podwire(&["--help"]);
    assert_eq!(code, 0);
    let (code, _) = podwire(&["--version"]);
    assert_eq!(code, 0);
}

/// Polls `cond` until it holds or `secs` pass.
fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::yield_now();
    }
    cond()
}

#[test]
fn sigusr1_logs_status_and_sigterm_cleans_up() {
    let dir = std::env::temp_dir().join(format!("podwire-sig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Run as root, podwire serves as `nobody` (its sandbox): its files' directory must let that
    // user remove them, as a deployment's socket directory would.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let sock = dir.join("vhost.sock");
    let pid = dir.join("podwire.pid");
    let log = dir.join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_podwire"))
        .args([
            "--vhost-user",
            "-f",
            "--socket",
            sock.to_str().unwrap(),
            "--pid",
            pid.to_str().unwrap(),
        ])
        .args(["--interface", "lo", "--guest-cidr", "198.19.0.0/24"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(
        wait_for(10, || pid.exists() && sock.exists()),
        "podwire started"
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    assert!(
        wait_for(10, || read_log()
            .contains("status: guest mac=unknown ip=198.19.0.2")),
        "{}",
        read_log()
    );

    // SAFETY: plain syscall on the child's pid, which has not been reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        !sock.exists() && !pid.exists(),
        "socket and pid file removed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
