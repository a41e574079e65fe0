//! The sandbox, tried in a child process: this test binary runs itself with one test selected
//! and `PODWIRE_SANDBOX_CHILD` naming what the child does once inside the sandbox.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use super::*;

const CHILD_ENV: &str = "PODWIRE_SANDBOX_CHILD";
const DIR_ENV: &str = "PODWIRE_SANDBOX_DIR";

/// The child's scratch directory (and its sibling `.elsewhere`), removed by `Scratch`'s drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(action: &str) -> Scratch {
        Scratch(
            std::env::temp_dir().join(format!("podwire-sandbox-{}-{action}", std::process::id())),
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_dir_all(self.0.with_extension("elsewhere"));
    }
}

/// Runs `child_entry` in a new process with `action`; returns its status and output.
fn run_child(action: &str) -> (std::process::ExitStatus, String) {
    let scratch = Scratch::new(action);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sandbox::tests::child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, action)
        .env(DIR_ENV, &scratch.0)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// The child's side: does nothing unless started by `run_child`. Exits with `_exit`, not by
/// returning, so that nothing the test harness does afterwards meets the filter.
#[test]
fn child_entry() {
    let Ok(action) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var_os(DIR_ENV).unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    // Writable by the user a root test run becomes, as a socket's directory would be.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let own = dir.join("own-file");
    std::fs::write(&own, "x").unwrap();
    // A file elsewhere, as removable by DAC as the own file: only Landlock keeps it.
    let elsewhere = dir.with_extension("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::set_permissions(
        &elsewhere,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let other = elsewhere.join("other-file");
    std::fs::write(&other, "x").unwrap();
    // One file elsewhere per thread that tries: one started after the sandbox, one before.
    let (after, before) = (elsewhere.join("after-file"), elsewhere.join("before-file"));
    std::fs::write(&after, "x").unwrap();
    std::fs::write(&before, "x").unwrap();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let early = std::thread::spawn(move || {
        let _ = wait.recv();
        std::fs::remove_file(&before).is_ok()
    });
    enter(&SandboxOptions {
        runas: None,
        disabled: false,
        own_files: vec![own.clone()],
        written_files: Vec::new(),
    })
    .unwrap();
    let code = match action.as_str() {
        "execve" => {
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated argv and envp arrays of valid C strings.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            // Not reached when the filter works: execve kills the process.
            3
        }
        "status" => {
            // Opening a file is not even on the seccomp list; removing one is, and only
            // Landlock keeps it to the start-up files' directories.
            // Capabilities and the bounding set are per thread: the parent reads this one's.
            // SAFETY: gettid cannot fail.
            println!("\nPID {}/task/{}", std::process::id(), unsafe {
                libc::gettid()
            });
            let removed = std::fs::remove_file(&own).is_ok();
            let other_removed = std::fs::remove_file(&other).is_ok();
            // Landlock is per thread: a thread started after the sandbox is in it, one that
            // was running before is not (which is why podwire starts none before).
            let late = std::thread::spawn(move || std::fs::remove_file(&after).is_ok());
            let late_removed = late.join().unwrap();
            let _ = go.send(());
            let early_removed = early.join().unwrap();
            println!(
                "\nREMOVED {removed} OTHER {other_removed} LATE {late_removed} EARLY {early_removed}"
            );
            // Wait for the parent to read /proc/PID/status, then leave.
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            0
        }
        "socket" => {
            // SAFETY: plain socket calls; the fds are closed right after.
            unsafe {
                let udp = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                assert!(udp >= 0);
                libc::close(udp);
                // Netlink is not on the list: this kills the process.
                libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0);
            }
            4
        }
        _ => 5,
    };
    // SAFETY: ends the process at once.
    unsafe { libc::_exit(code) };
}

#[test]
fn execve_in_the_sandbox_kills_the_process() {
    let (status, out) = run_child("execve");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}: {out}");
}

#[test]
fn a_socket_family_not_on_the_list_kills_the_process() {
    let (status, out) = run_child("socket");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}: {out}");
}

#[test]
fn the_sandboxed_process_has_no_privileges_and_a_filter() {
    use std::io::{BufRead, BufReader, Write};
    let scratch = Scratch::new("status");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sandbox::tests::child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "status")
        .env(DIR_ENV, &scratch.0)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut pid = None;
    let mut files = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(p) = line.strip_prefix("PID ") {
            pid = Some(p.trim().to_string());
        }
        if let Some(f) = line.strip_prefix("REMOVED ") {
            files = Some(f.to_string());
            break;
        }
    }
    let pid = pid.expect("the child printed its pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(status_field(&status, "Seccomp:"), "2", "{status}");
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "{status}");
    assert_eq!(status_field(&status, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(&status, "CapPrm:"), "0000000000000000");
    assert_eq!(status_field(&status, "CapBnd:"), "0000000000000000");
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let nobody = parse_runas(DEFAULT_USER).unwrap();
        let uid = status_field(&status, "Uid:");
        assert!(uid.starts_with(&nobody.uid.to_string()), "{uid}");
    }
    // The start-up file may be removed; nothing else where Landlock exists, from this thread
    // or one it started; a thread that was already running is outside Landlock.
    let files = files.expect("the child reported its file accesses");
    assert!(files.starts_with("true"), "{files}");
    if landlock_supported() {
        assert!(
            files.ends_with("OTHER false LATE false EARLY true"),
            "{files}"
        );
    }
}

#[test]
fn threads_started_before_the_sandbox_are_named_and_refused() {
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let (started, running) = std::sync::mpsc::channel::<()>();
    let early = std::thread::Builder::new()
        .name("early-thread".into())
        .spawn(move || {
            // The thread names itself as it starts: only from here on is it listed so.
            let _ = started.send(());
            let _ = wait.recv();
        })
        .unwrap();
    running.recv().unwrap();
    assert!(other_threads().unwrap().iter().any(|n| n == "early-thread"));
    match ensure_single_threaded() {
        Err(SandboxError::ThreadsBefore(names)) => {
            assert!(names.iter().any(|n| n == "early-thread"), "{names:?}")
        }
        other => panic!("{other:?}"),
    }
    let _ = go.send(());
    early.join().unwrap();
}

fn landlock_supported() -> bool {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_ulong = 1;
    // SAFETY: the version query takes no ruleset.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    abi > 0
}

#[test]
fn runas_accepts_names_and_numbers() {
    assert_eq!(parse_runas("0:0").unwrap(), Identity { uid: 0, gid: 0 });
    let root = parse_runas("root").unwrap();
    assert_eq!(root, Identity { uid: 0, gid: 0 });
    assert_eq!(parse_runas("root:0").unwrap(), root);
    assert!(matches!(
        parse_runas("no-such-user-podwire"),
        Err(SandboxError::NoSuchUser(_))
    ));
    assert!(matches!(
        parse_runas("root:no-such-group-podwire"),
        Err(SandboxError::NoSuchGroup(_))
    ));
}

#[test]
fn the_filter_compiles_and_names_each_call_once() {
    let program = filter().unwrap();
    assert!(!program.is_empty());
    let mut numbers: Vec<_> = SYSCALLS.iter().map(|&(_, nr)| nr).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), SYSCALLS.len(), "a system call listed twice");
}
