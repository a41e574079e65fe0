//! The process's life as passt's, which libvirt relies on: to the background once the socket
//! listens and the pid file is written; the reason on stderr and a non-zero status otherwise;
//! `--one-off`; socket and pid file gone on exit. podwire runs on `lo` here (no namespace
//! needed: nothing is sent).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("podwire-life-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if let Ok(pid) = read_pid(&self.path("pid")) {
            kill(pid, libc::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs podwire and waits for the command (the parent, in background mode) to exit and close
/// its stderr: a daemon that kept the caller's stderr open would hang this call.
fn podwire(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podwire"))
        .args(args)
        .output()
        .expect("run podwire")
}

fn read_pid(path: &Path) -> std::io::Result<i32> {
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("bad pid file {text:?}")))
}

fn kill(pid: i32, sig: i32) -> bool {
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, sig) == 0 }
}

fn alive(pid: i32) -> bool {
    kill(pid, 0)
}

/// Waits until `cond` holds, failing the test after a generous deadline.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn start_background(dir: &Dir, extra: &[&str]) -> i32 {
    let sock = dir.path("sock");
    let pid = dir.path("pid");
    let mut args = vec![
        "--vhost-user",
        "--interface",
        "lo",
        "--socket",
        sock.to_str().unwrap(),
        "--pid",
        pid.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = podwire(&args);
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The parent exited 0: the socket and the pid file must already be there.
    assert!(sock.exists(), "socket missing once the parent exited");
    let daemon = read_pid(&pid).expect("pid file written before the parent exited");
    assert!(alive(daemon), "the pid file names a live process");
    daemon
}

#[test]
fn background_after_the_socket_listens_and_clean_exit_on_sigterm() {
    let dir = Dir::new("bg");
    let daemon = start_background(&dir, &[]);
    UnixStream::connect(dir.path("sock")).expect("the socket listens");
    assert!(kill(daemon, libc::SIGTERM));
    wait_for("the daemon to exit", || !alive(daemon) || zombie(daemon));
    assert!(!dir.path("sock").exists(), "socket left behind");
    assert!(!dir.path("pid").exists(), "pid file left behind");
}

/// A child of an exited parent is reaped by init; until then it may show as a zombie.
fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

#[test]
fn one_off_exits_when_the_first_frontend_leaves() {
    let dir = Dir::new("oneoff");
    let daemon = start_background(&dir, &["--one-off"]);
    let frontend = UnixStream::connect(dir.path("sock")).unwrap();
    drop(frontend);
    wait_for("--one-off to exit", || !alive(daemon) || zombie(daemon));
    assert!(!dir.path("sock").exists(), "socket left behind");
    assert!(!dir.path("pid").exists(), "pid file left behind");
}

#[test]
fn failure_before_ready_is_one_line_and_non_zero_in_background_mode() {
    let dir = Dir::new("fail");
    let sock = dir.path("missing-dir/sock");
    let pid = dir.path("pid");
    let out = podwire(&[
        "--vhost-user",
        "--interface",
        "lo",
        "--socket",
        sock.to_str().unwrap(),
        "--pid",
        pid.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("cannot listen on"), "{stderr:?}");
    assert!(!pid.exists());

    // An unwritable pid file: the socket it bound is not left behind either.
    let sock = dir.path("sock");
    let pid = dir.path("no-such-dir/pid");
    let out = podwire(&[
        "--vhost-user",
        "-i",
        "lo",
        "-s",
        sock.to_str().unwrap(),
        "-P",
        pid.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot write"), "{stderr:?}");
    assert!(!sock.exists());
}

#[test]
fn unsupported_passt_option_is_refused_by_name() {
    let dir = Dir::new("refuse");
    let sock = dir.path("sock");
    for (option, extra) in [
        ("--no-ra", &["--no-ra"][..]),
        ("--outbound", &["-o", "198.18.0.2"]),
        ("--no-tcp", &["--no-tcp"]),
    ] {
        let mut args = vec!["--vhost-user", "-i", "lo", "-s", sock.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = podwire(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(
            stderr.trim_end(),
            format!("podwire: {option} is not supported by podwire")
        );
        assert!(!sock.exists());
    }
}

#[test]
fn foreground_stays_in_front_and_logs_to_the_log_file() {
    let dir = Dir::new("fg");
    let sock = dir.path("sock");
    let log = dir.path("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_podwire"))
        .args([
            "--vhost-user",
            "-f",
            "-i",
            "lo",
            "-s",
            sock.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the log line about listening", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("listening on"))
    });
    // Still our child: it did not fork away.
    assert!(child.try_wait().unwrap().is_none());
    kill(child.id() as i32, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "--log-file takes the log off stderr: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sock.exists());
}

/// Without `--vhost-user` the socket speaks QEMU's stream protocol (passt's default): a DHCP
/// discover written as a length-prefixed frame is answered with a length-prefixed offer.
#[test]
fn without_vhost_user_the_socket_speaks_the_stream_protocol() {
    use std::io::{Read, Write};
    let dir = Dir::new("stream");
    let sock = dir.path("sock");
    let pid = dir.path("pid");
    let out = podwire(&[
        "--one-off",
        "-i",
        "lo",
        "-s",
        sock.to_str().unwrap(),
        "-P",
        pid.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = read_pid(&pid).unwrap();
    let mut conn = UnixStream::connect(&sock).unwrap();
    let discover = dhcp_discover([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    conn.write_all(&(discover.len() as u32).to_be_bytes())
        .unwrap();
    conn.write_all(&discover).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut reply).unwrap();
    // To the guest's MAC, UDP from port 67 to 68, yiaddr the guest's address (10.0.2.2).
    assert_eq!(&reply[0..6], &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert_eq!(&reply[12..14], &[0x08, 0x00]);
    assert_eq!(&reply[34..38], &[0, 67, 0, 68]);
    assert_eq!(&reply[42 + 16..42 + 20], &[10, 0, 2, 2]);
    drop(conn);
    wait_for("--one-off to exit", || !alive(daemon) || zombie(daemon));
    assert!(!sock.exists() && !pid.exists());
}

/// A minimal DHCPDISCOVER from `mac`, as an Ethernet frame.
fn dhcp_discover(mac: [u8; 6]) -> Vec<u8> {
    let mut bootp = vec![0u8; 240];
    bootp[0] = 1; // BOOTREQUEST
    bootp[1] = 1; // Ethernet
    bootp[2] = 6;
    bootp[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    bootp[10] = 0x80; // broadcast flag
    bootp[28..34].copy_from_slice(&mac);
    bootp[236..240].copy_from_slice(&[99, 130, 83, 99]);
    bootp.extend_from_slice(&[53, 1, 1, 255]);
    let udp_len = 8 + bootp.len();
    let mut udp = vec![0, 68, 0, 67];
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // no checksum (allowed for IPv4)
    udp.extend_from_slice(&bootp);
    let total = 20 + udp.len();
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255,
    ];
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    let sum = ip
        .chunks(2)
        .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&udp);
    frame
}
