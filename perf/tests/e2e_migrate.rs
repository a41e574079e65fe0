//! Live migration of a guest between two podwires, in real QEMU (TCG): the source QEMU boots on
//! podwire A, the destination QEMU waits with `-incoming` on podwire B, both podwires in the
//! same pod namespace, and QMP `migrate` moves the guest while it pings the far host every
//! 100 ms.
//!
//! Without a TCP repair helper the destination cannot take over the source's sockets, which is
//! also the "different pod address" behaviour: the guest keeps its address and lease (they
//! travel in the device state), its open TCP connections are reset at once by the destination,
//! and new connections, UDP and ping work right after the switch-over. With a helper
//! (`podwire-repair`) on each side, the same pod address keeps them: a download, an upload and
//! an iperf3 stream through a forwarded port go on through the move, md5-checked.
//!
//! Downtime is measured outside the guest, whose clock stops with it: a thread reads the far
//! host's ICMP "echo requests received" counter every 2 ms, and the longest gap between two
//! arrivals while the migration ran is the time from the last request through the source to
//! the first through the destination. QEMU's own `downtime` and `total-time` are printed beside.

use std::net::IpAddr;
use std::path::PathBuf;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use podwire_perf::far;
use podwire_perf::netns::{Netns, PodTopology, Proc, FAR_HOST, POD_ADDR};
use podwire_perf::{guest, migrate, util, Podwire, PodwireConfig, Qemu, QemuConfig, Qmp};

const T: Duration = Duration::from_secs(120);
/// How long a transfer of about 10 s may take across the migration before it counts as stalled.
const STALL: Duration = Duration::from_secs(60);
/// How long the guest's console may take to answer once the transfers are over.
const CONSOLE_CHECK: Duration = Duration::from_secs(30);
const FILE_PORT: u16 = 8000;
const SINK_PORT: u16 = 8002;
const REPORT_PORT: u16 = 8003;

/// The far host's count of ICMP echo requests received, read through a process in its
/// namespace.
fn far_echo_requests(pid: u32) -> Option<u64> {
    let snmp = std::fs::read_to_string(format!("/proc/{pid}/net/snmp")).ok()?;
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next()?, icmp.next()?);
    let col = names.split_whitespace().position(|n| n == "InEchos")?;
    values.split_whitespace().nth(col)?.parse().ok()
}

/// Watches echo requests arrive at the far host until `stop` says so (or is dropped), sampling
/// the counter while it waits; returns the longest gap.
fn watch_pings(pid: u32, stop: mpsc::Receiver<()>) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let mut last_count = far_echo_requests(pid).unwrap_or(0);
        let mut last_at = Instant::now();
        let mut longest = Duration::ZERO;
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_millis(2))
        {
            let Some(n) = far_echo_requests(pid) else {
                continue;
            };
            if n != last_count {
                longest = longest.max(last_at.elapsed());
                last_count = n;
                last_at = Instant::now();
            }
        }
        longest
    })
}

fn guest_config(name: &str, pw: &Podwire, qmp: std::path::PathBuf) -> QemuConfig {
    let image = guest::image().unwrap();
    QemuConfig::new(&image)
        .name(name)
        .vhost_user(pw.socket())
        .qmp(qmp)
}

/// Migrates the source to the destination listening on `dir`'s `mig.sock`, and waits until
/// the destination runs. Returns QEMU's figures and the wall-clock time of the migration.
fn migrate_and_resume(
    src: &mut Qmp,
    dst: &mut Qmp,
    dir: &util::TempDir,
) -> (podwire_perf::qemu::MigrationResult, Duration) {
    let started = Instant::now();
    let uri = format!("unix:{}", dir.join("mig.sock").display());
    let result = migrate(src, &uri, T).unwrap();
    let migration_time = started.elapsed();
    assert_eq!(result.status, "completed", "{}", result.info);
    util::wait_until("the destination to run", T, || {
        let s = dst.execute("query-status", serde_json::json!({}))?;
        Ok(s["status"] == "running")
    })
    .unwrap();
    (result, migration_time)
}

/// Boots the source guest on `pw` and takes a lease.
fn boot_source(pw: &Podwire, dir: &util::TempDir) -> (Qemu, guest::Lease) {
    let mut src = Qemu::boot(&guest_config("mig-src", pw, dir.join("a.qmp"))).unwrap();
    let c = src.console();
    c.run_ok("ip link set eth0 up", T).unwrap();
    let lease = guest::udhcpc(c, "eth0", 10, T).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(lease.ip(), Some(POD_ADDR.to_string().as_str()), "{lease:?}");
    (src, lease)
}

/// Starts the destination QEMU on `pw`, waiting for the migration on `dir`/mig.sock.
fn spawn_destination(pw: &Podwire, dir: &util::TempDir) -> (Qemu, Qmp) {
    let dst_cfg = guest_config("mig-dst", pw, dir.join("b.qmp"))
        .incoming(&format!("unix:{}", dir.join("mig.sock").display()));
    let dst = Qemu::spawn(&dst_cfg).unwrap();
    let mut qmp = Qmp::connect(&dir.join("b.qmp"), T).unwrap();
    qmp.set_migration_capability("return-path", true).unwrap();
    util::wait_until("the destination to listen", T, || {
        Ok(dir.join("mig.sock").exists())
    })
    .unwrap();
    (dst, qmp)
}

/// A destination podwire that cannot take the guest over (here: pinned to another MAC)
/// refuses the state at CHECK_DEVICE_STATE; QEMU fails the migration and the source guest
/// goes on, on its podwire, as before.
#[test]
fn refused_state_fails_the_migration_and_the_source_keeps_serving() {
    let topo = PodTopology::create().unwrap();
    let dir = util::TempDir::new("e2e-migrate-refused").unwrap();
    let mut pw_src =
        Podwire::spawn(Some(&topo.pod), &PodwireConfig::new(dir.join("a.sock"))).unwrap();
    let mut dst_cfg = PodwireConfig::new(dir.join("b.sock"));
    dst_cfg.mac = Some("52:54:00:00:00:99".into());
    let mut pw_dst = Podwire::spawn(Some(&topo.pod), &dst_cfg).unwrap();
    let (mut src, _lease) = boot_source(&pw_src, &dir);
    let (mut dst, _qmp_dst) = spawn_destination(&pw_dst, &dir);
    let mut qmp_src = Qmp::connect(&dir.join("a.qmp"), T).unwrap();
    qmp_src
        .set_migration_capability("return-path", true)
        .unwrap();

    let result = migrate(
        &mut qmp_src,
        &format!("unix:{}", dir.join("mig.sock").display()),
        T,
    )
    .unwrap();
    assert_eq!(result.status, "failed", "{}", result.info);
    let log = pw_dst.log();
    assert!(
        log.contains("refused the migrated device state") && log.contains("pinned to"),
        "{log}"
    );
    util::wait_until("the destination QEMU to give up", T, || {
        Ok(!dst.is_running())
    })
    .unwrap();
    assert!(dst.stderr().contains("Back-end failed") || !dst.stderr().is_empty());
    util::wait_until("the source to run again", T, || {
        let s = qmp_src.execute("query-status", serde_json::json!({}))?;
        Ok(s["status"] == "running")
    })
    .unwrap();
    let ping = src
        .console()
        .run_ok(&format!("ping -c 3 -W 5 {FAR_HOST}"), T)
        .unwrap();
    assert!(ping.contains("3 packets received"), "{ping}");
    pw_src.ensure_running().unwrap();
    pw_dst.ensure_running().unwrap();
    src.poweroff(T).unwrap();
}

/// A migration cancelled half-way (slowed down so that it is still copying memory) leaves the
/// source guest on its podwire, serving as before: dirty logging comes and goes with it.
#[test]
fn cancelled_migration_leaves_the_source_serving() {
    let topo = PodTopology::create().unwrap();
    let dir = util::TempDir::new("e2e-migrate-cancel").unwrap();
    let mut pw_src =
        Podwire::spawn(Some(&topo.pod), &PodwireConfig::new(dir.join("a.sock"))).unwrap();
    let pw_dst = Podwire::spawn(Some(&topo.pod), &PodwireConfig::new(dir.join("b.sock"))).unwrap();
    let (mut src, _lease) = boot_source(&pw_src, &dir);
    let (_dst, _qmp_dst) = spawn_destination(&pw_dst, &dir);
    let mut qmp = Qmp::connect(&dir.join("a.qmp"), T).unwrap();
    qmp.set_migration_capability("return-path", true).unwrap();
    // 1 MiB/s: the 100+ MiB the guest has touched take minutes.
    qmp.execute(
        "migrate-set-parameters",
        serde_json::json!({"max-bandwidth": 1 << 20}),
    )
    .unwrap();
    let uri = format!("unix:{}", dir.join("mig.sock").display());
    qmp.execute("migrate", serde_json::json!({"uri": uri}))
        .unwrap();
    util::wait_until("memory to be on its way", T, || {
        let q = qmp.execute("query-migrate", serde_json::json!({}))?;
        Ok(q["status"] == "active" && q["ram"]["transferred"].as_u64().unwrap_or(0) > 0)
    })
    .unwrap();
    assert!(
        pw_src.log().contains("LOG_ALL"),
        "dirty logging on while copying"
    );
    qmp.execute("migrate_cancel", serde_json::json!({}))
        .unwrap();
    util::wait_until("the migration to be cancelled", T, || {
        let q = qmp.execute("query-migrate", serde_json::json!({}))?;
        Ok(q["status"] == "cancelled")
    })
    .unwrap();
    let status = qmp.execute("query-status", serde_json::json!({})).unwrap();
    assert_eq!(status["status"], "running");
    util::wait_until("dirty logging to be off again", T, || {
        let log = pw_src.log();
        let last = log.lines().rev().find(|l| l.contains("guest negotiated"));
        Ok(last.is_some_and(|l| !l.contains("LOG_ALL")))
    })
    .unwrap();
    let ping = src
        .console()
        .run_ok(&format!("ping -c 3 -W 5 {FAR_HOST}"), T)
        .unwrap();
    assert!(ping.contains("3 packets received"), "{ping}");
    pw_src.ensure_running().unwrap();
    src.poweroff(T).unwrap();
}

#[test]
fn guest_migrates_keeps_its_lease_old_connections_are_reset_new_ones_work() {
    let topo = PodTopology::create().unwrap();
    let dir = util::TempDir::new("e2e-migrate").unwrap();
    let far4 = IpAddr::V4(FAR_HOST);
    let file = dir.join("served.bin");
    let want = far::random_file(&file, 4).unwrap();
    let server = far::start_file_server(&topo.far, far4, FILE_PORT, &file).unwrap();
    let upload = dir.join("uploaded.bin");
    let _sink = far::start_file_sink(&topo.far, far4, SINK_PORT, &upload).unwrap();
    // The guest reports the download's md5 to the far host over a new connection: nothing
    // after the switch-over depends on the guest's serial console, which under TCG sometimes
    // stops answering after a migration under load (see docs/perf.md).
    let dl_report = dir.join("download.md5");
    let _report = far::start_file_sink(&topo.far, far4, REPORT_PORT, &dl_report).unwrap();
    let _echo = far::start_udp_echo(&topo.far, far::UDP_ECHO_PORT).unwrap();
    let _tcp_echo = far::start_tcp_echo(&topo.far, far::TCP_ECHO_PORT).unwrap();

    let mut pw_src =
        Podwire::spawn(Some(&topo.pod), &PodwireConfig::new(dir.join("a.sock"))).unwrap();
    let mut pw_dst =
        Podwire::spawn(Some(&topo.pod), &PodwireConfig::new(dir.join("b.sock"))).unwrap();

    let (mut src, lease) = boot_source(&pw_src, &dir);
    let c = src.console();
    // An idle TCP connection that must not survive the move unnoticed, and pings every 100 ms.
    c.run_ok(
        &format!(
            "(socat -d -d -u TCP4:{FAR_HOST}:{} - >/dev/null 2>/tmp/old.err; echo $? >/tmp/old.done) &",
            far::TCP_ECHO_PORT
        ),
        T,
    )
    .unwrap();
    c.run_ok(&format!("ping -i 0.1 {FAR_HOST} >/tmp/ping.log 2>&1 &"), T)
        .unwrap();
    util::wait_until("the old connection to be established", T, || {
        Ok(c.run_ok("awk '$4 == \"01\"' /proc/net/tcp | wc -l", T)?
            .trim()
            .parse::<u32>()
            .unwrap_or(0)
            >= 1)
    })
    .unwrap();

    let (mut dst, mut qmp_dst) = spawn_destination(&pw_dst, &dir);
    let mut qmp_src = Qmp::connect(&dir.join("a.qmp"), T).unwrap();
    qmp_src
        .set_migration_capability("return-path", true)
        .unwrap();

    let (stop, stopped) = mpsc::channel();
    let watcher = watch_pings(server.pid(), stopped);
    let (result, migration_time) = migrate_and_resume(&mut qmp_src, &mut qmp_dst, &dir);
    // The first pings through the destination.
    let c = dst.console();
    let replies = |c: &mut podwire_perf::Console| -> anyhow::Result<usize> {
        Ok(c.run_ok("grep -c 'bytes from' /tmp/ping.log || true", T)?
            .trim()
            .parse()
            .unwrap_or(0))
    };
    let at_switch_over = replies(c).unwrap();
    let pinging = util::wait_until(
        "pings through the destination",
        Duration::from_secs(30),
        || Ok(replies(c)? >= at_switch_over + 3),
    );
    if let Err(e) = pinging {
        let dmesg = c
            .run("dmesg | tail -n 20; cat /proc/interrupts", T)
            .unwrap();
        panic!("{e:#}\n{}", dmesg.output);
    }
    let _ = stop.send(());
    let downtime = watcher.join().unwrap();
    eprintln!(
        "migration: {migration_time:?} wall, QEMU total-time {:?} ms, QEMU downtime {:?} ms, \
         ping gap at the far host {downtime:?}",
        result.total_time_ms, result.downtime_ms
    );

    // The destination podwire took the guest's state over.
    let log = pw_dst.log();
    assert!(log.contains("took over the guest"), "{log}");
    assert!(
        log.contains(&format!("IPv4 {POD_ADDR}")),
        "the address travelled: {log}"
    );
    // The old connection was reset, not left hanging.
    util::wait_until(
        "the old connection to be reset",
        Duration::from_secs(20),
        || Ok(c.run("test -e /tmp/old.done", T)?.code == 0),
    )
    .unwrap();
    let err = c.run_ok("cat /tmp/old.done /tmp/old.err", T).unwrap();
    assert!(err.contains("reset"), "{err}\n{}", pw_dst.log());
    // Same address, new connections, UDP, ping.
    let addr = c.run_ok("ip -4 addr show eth0", T).unwrap();
    assert!(addr.contains(&POD_ADDR.to_string()), "{addr}");
    let got = guest::download_md5(c, far4, FILE_PORT, T).unwrap();
    assert_eq!(got, want, "download after the move");
    let sent = guest::upload_random(c, far4, SINK_PORT, 1024, T).unwrap();
    assert_eq!(
        far::md5_once_complete(&upload, 1024 * 1024, T).unwrap(),
        sent,
        "upload after the move"
    );
    let payload = "podwire-migrated-udp";
    let echo = c
        .run_ok(
            &format!(
                "echo {payload} | socat -t 3 -T 5 - UDP4:{FAR_HOST}:{}",
                far::UDP_ECHO_PORT
            ),
            T,
        )
        .unwrap();
    assert_eq!(echo.trim(), payload);
    // The renewed lease is the same one.
    let renewed = guest::udhcpc(c, "eth0", 10, T).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(renewed.ip(), lease.ip());

    pw_src.ensure_running().unwrap();
    pw_dst.ensure_running().unwrap();
    drop(src);
    dst.poweroff(T).unwrap();
}

/// Size of each md5-checked transfer in the TCP-repair test, in MiB: `PODWIRE_MIGRATE_MIB`,
/// 64 by default (issue 12's size; the transfers are shaped to last about 10 s whatever
/// their size, so a smaller one is no faster).
fn transfer_mib() -> u32 {
    std::env::var("PODWIRE_MIGRATE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&m| (1..=256).contains(&m))
        .unwrap_or(64)
}

/// The repair helper: `$PODWIRE_REPAIR_BIN`, else the workspace's `podwire-repair` (built here
/// if `cargo test` did not build it for this package).
fn repair_helper_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PODWIRE_REPAIR_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let target = util::target_dir();
    let newest = ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("podwire-repair"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t);
    if let Some((_, p)) = newest {
        return p;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--locked", "-p", "podwire-repair"])
        .status()
        .expect("running cargo build -p podwire-repair");
    assert!(status.success(), "cargo build -p podwire-repair failed");
    target.join("debug").join("podwire-repair")
}

/// Starts `podwire-repair` (as root, in the caller's namespaces: it only switches the repair
/// mode of sockets it is handed) for the podwire listening on `socket`'s `.repair` path.
fn start_repair_helper(socket: &std::path::Path) -> Proc {
    let mut path = socket.as_os_str().to_owned();
    path.push(".repair");
    let mut cmd = std::process::Command::new(repair_helper_path());
    cmd.arg(&path);
    Proc::spawn("podwire-repair", cmd).unwrap()
}

/// Shapes `ns`'s egress on its eth0 to `mbit` for everything but ICMP, so that the transfers
/// last through the migration while the pings that measure the downtime never wait behind
/// them. The queue is long enough (packets) that TCP is delayed, never dropped.
fn shape(ns: &Netns, mbit: u32) {
    ns.sh(&format!(
        "tc qdisc add dev eth0 root handle 1: htb default 20 && \
         tc class add dev eth0 parent 1: classid 1:10 htb rate 10gbit && \
         tc class add dev eth0 parent 1: classid 1:20 htb rate {mbit}mbit ceil {mbit}mbit && \
         tc qdisc add dev eth0 parent 1:20 handle 20: pfifo limit 100000 && \
         tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip protocol 1 0xff \
            flowid 1:10"
    ))
    .unwrap();
}

/// Same pod address, a repair helper on each side: the guest's TCP connections move with
/// their sockets. During the migration the guest pings the far host every 100 ms, downloads a
/// file from it and uploads one (both md5-checked), and receives an iperf3 stream from it
/// through a forwarded pod port. Both podwires share one namespace here, so the destination
/// forwards another pod port (5202) to the same guest port: in a real pair of pods both would
/// be 5201; a new iperf3 run through it after the move shows the destination's forward works.
#[test]
fn same_address_migration_keeps_tcp_connections_with_repair_helpers() {
    const IPERF_GUEST_PORT: u16 = 5201;
    const DST_FORWARD: u16 = 5202;
    const IPERF_MBIT: u32 = 10;
    let mib = transfer_mib();
    let topo = PodTopology::create().unwrap();
    let dir = util::TempDir::new("e2e-migrate-repair").unwrap();
    let far4 = IpAddr::V4(FAR_HOST);
    let file = dir.join("served.bin");
    let want_download = far::random_file(&file, mib).unwrap();
    let server = far::start_file_server(&topo.far, far4, FILE_PORT, &file).unwrap();
    let upload = dir.join("uploaded.bin");
    let _sink = far::start_file_sink(&topo.far, far4, SINK_PORT, &upload).unwrap();
    // The guest reports the download's md5 to the far host over a new connection: nothing
    // after the switch-over depends on the guest's serial console, which under TCG sometimes
    // stops answering after a migration under load (see docs/perf.md).
    let dl_report = dir.join("download.md5");
    let _report = far::start_file_sink(&topo.far, far4, REPORT_PORT, &dl_report).unwrap();

    let mut src_cfg = PodwireConfig::new(dir.join("a.sock"));
    src_cfg.extra_args = vec!["--tcp-ports".into(), IPERF_GUEST_PORT.to_string()];
    let mut dst_cfg = PodwireConfig::new(dir.join("b.sock"));
    dst_cfg.extra_args = vec![
        "--tcp-ports".into(),
        format!("{DST_FORWARD}:{IPERF_GUEST_PORT}"),
    ];
    let mut pw_src = Podwire::spawn(Some(&topo.pod), &src_cfg).unwrap();
    let mut pw_dst = Podwire::spawn(Some(&topo.pod), &dst_cfg).unwrap();
    let mut helper_src = start_repair_helper(pw_src.socket());
    let mut helper_dst = start_repair_helper(pw_dst.socket());

    let (mut src, lease) = boot_source(&pw_src, &dir);
    let c = src.console();
    c.run_ok(
        &format!("iperf3 -s -D -p {IPERF_GUEST_PORT} --logfile /tmp/iperf3-s.log"),
        T,
    )
    .unwrap();
    let want_upload = c
        .run_ok(
            &format!(
                "dd if=/dev/urandom of=/tmp/up bs=1M count={mib} 2>/dev/null; md5sum </tmp/up"
            ),
            T,
        )
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    // Each transfer alone would take about 10 s; iperf3 has its own 10 Mbit/s on top.
    let transfer_mbit = (mib * 84 / 100).max(1);
    shape(&topo.far, transfer_mbit + IPERF_MBIT);
    shape(&topo.pod, transfer_mbit);

    c.run_ok(&format!("ping -i 0.1 {FAR_HOST} >/tmp/ping.log 2>&1 &"), T)
        .unwrap();
    c.run_ok(
        &format!(
            // Not kept in the guest's memory: hashed as it comes, its size counted by dd.
            "(socat -T 120 -u TCP4:{FAR_HOST}:{FILE_PORT} - 2>/tmp/dl.err | md5sum \
              | socat -u - TCP4:{FAR_HOST}:{REPORT_PORT}) >/dev/null 2>&1 &"
        ),
        T,
    )
    .unwrap();
    c.run_ok(
        &format!(
            "(socat -T 120 -u FILE:/tmp/up TCP4:{FAR_HOST}:{SINK_PORT} 2>/tmp/up.err; \
              echo $? >/tmp/up.done) >/dev/null 2>&1 &"
        ),
        T,
    )
    .unwrap();
    let iperf_secs = 30;
    let mut iperf = topo
        .far
        .spawn(
            "iperf3-to-guest",
            &[
                "iperf3",
                "-c",
                &POD_ADDR.to_string(),
                "-p",
                &IPERF_GUEST_PORT.to_string(),
                "-t",
                &iperf_secs.to_string(),
                "-b",
                &format!("{IPERF_MBIT}M"),
                "--forceflush",
            ],
        )
        .unwrap();
    // Everything under way: the upload has reached the far host, the stream reports.
    util::wait_until("the transfers to be under way", T, || {
        iperf.ensure_running()?;
        let up = std::fs::metadata(&upload).map(|m| m.len()).unwrap_or(0);
        Ok(up > 0 && iperf.log().contains("bits/sec"))
    })
    .unwrap();

    let (mut dst, mut qmp_dst) = spawn_destination(&pw_dst, &dir);
    let mut qmp_src = Qmp::connect(&dir.join("a.qmp"), T).unwrap();
    qmp_src
        .set_migration_capability("return-path", true)
        .unwrap();
    // While the source has closed the sockets and the destination has not rebuilt them (a
    // few ms of QEMU's downtime), a segment from the far host finds no socket and the pod's
    // kernel answers it with a RST, which would end the connection. Between two pods the
    // address is unreachable meanwhile and such segments are lost (and sent again); here both
    // podwires share one namespace, so the test drops the pod's RSTs for the duration, as
    // the network would.
    topo.pod
        .sh("nft add table inet migration && \
             nft add chain inet migration out '{ type filter hook output priority 0; }' && \
             nft add rule inet migration out tcp flags '&' rst == rst drop")
        .unwrap();
    let (stop, stopped) = mpsc::channel();
    let watcher = watch_pings(server.pid(), stopped);
    let upload_at_start = std::fs::metadata(&upload).map(|m| m.len()).unwrap_or(0);
    let (result, migration_time) = migrate_and_resume(&mut qmp_src, &mut qmp_dst, &dir);
    let upload_at_end = std::fs::metadata(&upload).map(|m| m.len()).unwrap_or(0);
    let echoes = || far_echo_requests(server.pid()).unwrap_or(0);
    let at_switch_over = echoes();
    util::wait_until("pings through the destination", T, || {
        Ok(echoes() >= at_switch_over + 3)
    })
    .unwrap();
    topo.pod.sh("nft delete table inet migration").unwrap();
    let _ = stop.send(());
    let downtime = watcher.join().unwrap();
    eprintln!(
        "migration with traffic ({mib} MiB each way + iperf3 {IPERF_MBIT} Mbit/s): \
         {migration_time:?} wall, QEMU total-time {:?} ms, QEMU downtime {:?} ms, ping gap at \
         the far host {downtime:?}",
        result.total_time_ms, result.downtime_ms
    );
    let total = u64::from(mib) << 20;
    assert!(
        upload_at_start < total && upload_at_end < total,
        "the upload ({upload_at_start}..{upload_at_end} of {total} bytes) must span the \
         migration"
    );

    // The connections moved with their sockets: none was reset.
    let src_log = pw_src.log();
    let dst_log = pw_dst.log();
    assert!(
        src_log.contains("migration: handing over") && src_log.contains("; 0 will be reset"),
        "{src_log}"
    );
    assert!(
        dst_log.contains("with their sockets") && dst_log.contains("resetting 0 TCP"),
        "{dst_log}"
    );
    // What a stalled transfer looks like from both ends and from the destination podwire.
    let stall_report = || {
        let far_ss = topo.far.exec(&["ss", "-tnie"]).unwrap_or_default();
        let pod_ss = topo.pod.exec(&["ss", "-tnie"]).unwrap_or_default();
        let flows = control(&topo, &pw_dst, "flows").unwrap_or_default();
        format!("far:\n{far_ss}\npod:\n{pod_ss}\ndestination flows:\n{flows}")
    };
    // Both transfers complete, byte for byte, as the far host sees them. Each takes about
    // 10 s unhindered: a minute without the end is a stall (socat's own inactivity limit
    // would take 2 minutes more).
    util::wait_until("the guest's md5 of the download", STALL, || {
        Ok(std::fs::read_to_string(&dl_report).is_ok_and(|r| r.contains('\n')))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", stall_report()));
    let got = std::fs::read_to_string(&dl_report).unwrap();
    assert_eq!(
        got.split_whitespace().next(),
        Some(want_download.as_str()),
        "download across the migration differs ({got})\n{}",
        stall_report()
    );
    let uploaded = far::md5_once_complete(&upload, total, STALL).unwrap_or_else(|e| {
        let got = std::fs::metadata(&upload).map(|m| m.len()).unwrap_or(0);
        panic!(
            "{e:#}\nupload: {got} of {total} bytes at the far host\n{}",
            stall_report()
        )
    });
    assert_eq!(uploaded, want_upload, "upload across the migration");
    // The iperf3 stream ran its course through the move.
    let exit = iperf.wait_timeout(T).unwrap();
    let report = iperf.log();
    assert!(
        exit.success() && report.contains("receiver"),
        "iperf3 through the forwarded port: {exit:?}\n{report}"
    );
    // The destination's own forward works. The guest's iperf3 server takes a while (under
    // TCG) to finish the last test after its client has gone, and until then it refuses a
    // new client by closing the connection with the client's greeting unread: a reset. So
    // runs are tried until one goes through (the last few logs kept for the report).
    let mut logs = std::collections::VecDeque::new();
    let mut attempt = 0;
    let forwarded = util::wait_until("iperf3 through the destination's forward", T, || {
        attempt += 1;
        let mut again = topo.far.spawn(
            &format!("iperf3-after-{attempt}"),
            &[
                "iperf3",
                "-c",
                &POD_ADDR.to_string(),
                "-p",
                &DST_FORWARD.to_string(),
                "-t",
                "2",
            ],
        )?;
        let ok = again.wait_timeout(T)?.success();
        logs.push_back(again.log());
        if logs.len() > 3 {
            logs.pop_front();
        }
        Ok(ok)
    });
    if let Err(e) = forwarded {
        panic!("{e:#}\n{logs:#?}\n{}", stall_report());
    }
    // Pings: at most a few lost, all of them in the switch-over (10 per second).
    assert!(
        downtime <= Duration::from_millis(600),
        "pings stopped reaching the far host for {downtime:?}"
    );
    // The guest keeps its lease: the destination serves it and renews it.
    let leased = destination_lease(&topo, &pw_dst);
    assert_eq!(
        leased,
        Some(IpAddr::V4(POD_ADDR)),
        "the destination's lease"
    );
    // What only the guest can tell, asked while its console answers.
    let c = dst.console();
    let console = c.run(
        "killall -INT ping; sleep 1; tail -n 3 /tmp/ping.log",
        CONSOLE_CHECK,
    );
    match console {
        Ok(out) => {
            let (sent, received) = ping_summary(&out.output)
                .unwrap_or_else(|| panic!("no ping summary: {}", out.output));
            assert!(
                sent - received <= 5,
                "lost {} of {sent} pings: {}",
                sent - received,
                out.output
            );
            let renewed = guest::udhcpc(c, "eth0", 10, T).unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(renewed.ip(), lease.ip());
        }
        Err(e) => {
            c.clear_failed();
            eprintln!(
                "NOTE: the guest's serial console does not answer after the migration \
                 ({e:#}); ping loss and the lease were checked from outside only"
            );
        }
    }

    helper_src.ensure_running().unwrap();
    helper_dst.ensure_running().unwrap();
    pw_src.ensure_running().unwrap();
    pw_dst.ensure_running().unwrap();
    drop(src);
    dst.poweroff(T).unwrap();
}

/// `podwire CMD --json` against `pw`'s control socket, run in the pod.
fn control(topo: &PodTopology, pw: &Podwire, cmd: &str) -> Option<String> {
    let bin = podwire_perf::podwire_path().ok()?;
    let socket = pw.socket().display().to_string();
    let bin = bin.display().to_string();
    topo.pod
        .exec(&[&bin, cmd, "--socket", &socket, "--json"])
        .ok()
}

/// The IPv4 address the destination podwire holds a lease for, from its control socket.
fn destination_lease(topo: &PodTopology, pw: &Podwire) -> Option<IpAddr> {
    let status: serde_json::Value = serde_json::from_str(&control(topo, pw, "status")?).ok()?;
    status["status"]["guest"]["ipv4"]["lease"]["address"]
        .as_str()?
        .parse()
        .ok()
}

/// (transmitted, received) from ping's summary line.
fn ping_summary(out: &str) -> Option<(u64, u64)> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty());
    Some((nums.next()?.parse().ok()?, nums.next()?.parse().ok()?))
}
