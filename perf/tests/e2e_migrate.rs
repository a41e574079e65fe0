//! Live migration of a guest between two podwires, in real QEMU (TCG): the source QEMU boots on
//! podwire A, the destination QEMU waits with `-incoming` on podwire B, both podwires in the
//! same pod namespace, and QMP `migrate` moves the guest while it pings the far host every
//! 100 ms.
//!
//! Without TCP repair the destination cannot take over the source's sockets, which is the
//! "different pod address" behaviour: the guest keeps its address and lease (they travel in the
//! device state), its open TCP connections are reset at once by the destination, and new
//! connections, UDP and ping work right after the switch-over.
//!
//! Downtime is measured outside the guest, whose clock stops with it: a thread reads the far
//! host's ICMP "echo requests received" counter every 2 ms, and the longest gap between two
//! arrivals while the migration ran is the time from the last request through the source to
//! the first through the destination. QEMU's own `downtime` and `total-time` are printed beside.

use std::net::IpAddr;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use podwire_perf::far;
use podwire_perf::netns::{PodTopology, FAR_HOST, POD_ADDR};
use podwire_perf::{guest, migrate, util, Podwire, PodwireConfig, Qemu, QemuConfig, Qmp};

const T: Duration = Duration::from_secs(120);
const FILE_PORT: u16 = 8000;
const SINK_PORT: u16 = 8002;

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
    let started = Instant::now();
    let result = migrate(
        &mut qmp_src,
        &format!("unix:{}", dir.join("mig.sock").display()),
        T,
    )
    .unwrap();
    let migration_time = started.elapsed();
    assert_eq!(result.status, "completed", "{}", result.info);
    util::wait_until("the destination to run", T, || {
        let s = qmp_dst.execute("query-status", serde_json::json!({}))?;
        Ok(s["status"] == "running")
    })
    .unwrap();
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
