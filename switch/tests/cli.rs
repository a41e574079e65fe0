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
