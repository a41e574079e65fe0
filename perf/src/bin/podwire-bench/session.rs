//! Measuring: one guest per backend and MTU (or dpdk-testpmd), its tests, CPU windows.

use super::*;

// ---------------------------------------------------------- CPU windows ----

/// CPU counters at the start of a measured window.
pub(crate) struct Window {
    pub(crate) pids: (Option<u32>, Option<u32>),
    pub(crate) others: usize,
    pub(crate) pw0: Option<f64>,
    pub(crate) q0: Option<f64>,
    pub(crate) m0: f64,
    pub(crate) t0: Instant,
}

impl Window {
    pub(crate) fn start(podwire: Option<u32>, qemu: Option<u32>) -> Result<Window> {
        Ok(Window {
            pids: (podwire, qemu),
            others: bench::pids_named("qemu-system", &[qemu.unwrap_or(0)]).len(),
            pw0: podwire.map(bench::cpu_seconds).transpose()?,
            q0: qemu.map(bench::cpu_seconds).transpose()?,
            m0: bench::machine_busy_seconds()?,
            t0: Instant::now(),
        })
    }

    /// Fills the figure's wall time and CPU seconds.
    pub(crate) fn end(self, f: &mut Figure) -> Result<()> {
        f.wall_s = Some(self.t0.elapsed().as_secs_f64());
        let others = bench::pids_named("qemu-system", &[self.pids.1.unwrap_or(0)]).len();
        f.other_qemus = Some((self.others, others));
        let pw = match (self.pids.0, self.pw0) {
            (Some(p), Some(a)) => Some(bench::cpu_seconds(p)? - a),
            _ => None,
        };
        let q = match (self.pids.1, self.q0) {
            (Some(p), Some(a)) => Some(bench::cpu_seconds(p)? - a),
            _ => None,
        };
        let m = bench::machine_busy_seconds()? - self.m0;
        f.podwire_cpu_s = pw;
        f.qemu_cpu_s = q;
        f.rest_cpu_s = Some(m - pw.unwrap_or(0.0) - q.unwrap_or(0.0));
        Ok(())
    }
}

// ---------------------------------------------------------- guest session ----

/// One guest on one backend: sets everything up, runs `tests`, records each.
pub(crate) fn run_guest_session(
    env: &Env,
    backend: Backend,
    mtu: u32,
    tests: &[Test],
    results: &mut Results,
) {
    let mut mem = Memory::default();
    let mut done = Vec::new();
    let r = guest_session(env, backend, mtu, tests, &mut mem, &mut done, results);
    if let Err(e) = r {
        let reason = short_reason(&e);
        println!("SESSION FAILED: {reason}");
        println!("{}", util::tail(&format!("{e:#}"), 4000));
        for t in tests {
            if !done.contains(t) {
                results.record(backend, *t, Figure::failed(reason.clone()));
            }
        }
    }
    if backend != Backend::Kernel {
        results.memory.entry(backend).or_default().push((mtu, mem));
    }
}

pub(crate) struct Guest {
    pub(crate) vm: Qemu,
    /// podwire or passt (None on the kernel path)
    pub(crate) podwire: Option<Served>,
    pub(crate) qemu_pid: u32,
}

impl Guest {
    /// The backend process's pid (podwire's or passt's): its CPU goes in `podwire_cpu_s`.
    pub(crate) fn podwire_pid(&self) -> Option<u32> {
        self.podwire.as_ref().map(Served::pid)
    }

    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(pw) = self.podwire.as_mut() {
            pw.ensure_running()?;
        }
        if !self.vm.is_running() {
            bail!("QEMU exited; its stderr:\n{}", self.vm.stderr());
        }
        Ok(())
    }
}

pub(crate) fn guest_session(
    env: &Env,
    backend: Backend,
    mtu: u32,
    tests: &[Test],
    mem: &mut Memory,
    done: &mut Vec<Test>,
    results: &mut Results,
) -> Result<()> {
    let topo = PodTopology::create_with(&TopologyOptions { mtu: Some(mtu) })?;
    let dir = util::TempDir::new("bench-session")?;
    let _iperf = far::start_iperf3(&topo.far, far::IPERF3_PORT)?;
    let _rr = start_rr_server(&topo.far, env.rr_bin)?;
    let _sink = pktgen::install_sink(&topo.far)?;

    let name = format!(
        "bench-{}-{mtu}",
        match backend {
            Backend::Podwire => "pw",
            Backend::Kernel => "kp",
            Backend::Passt => "passt",
            Backend::PodwireBefore => "pwb",
        }
    );
    let mtu_prop = format!("host_mtu={mtu}");
    let mut nic_props: Vec<&str> = env.args.nic_props.iter().map(String::as_str).collect();
    if mtu != 1500 {
        nic_props.push(&mtu_prop);
    }
    let spec = GuestSpec {
        nic_props: &nic_props,
        ..GuestSpec::new(&name)
    };
    let mut qcfg = rig::qemu_config(env.image, &spec);
    let mut podwire = None;
    let mut _kpath = None;
    match backend {
        Backend::Podwire | Backend::PodwireBefore | Backend::Passt => {
            let stream = env.args.nic == NicKind::Stream;
            let o = ServeOptions {
                mtu: Some(mtu),
                mac: None,
                udp_forward: None,
                stream,
            };
            let pw = Served::spawn(env, backend, &topo.pod, &dir.join("vhost.sock"), &o)?;
            mem.no_guest = Some(bench::mem_status(pw.pid())?);
            qcfg = if stream {
                qcfg.nic(Nic::Stream {
                    socket: pw.socket().to_path_buf(),
                })
            } else {
                qcfg.vhost_user(pw.socket())
            };
            podwire = Some(pw);
        }
        Backend::Kernel => {
            _kpath = Some(KernelPath::setup(&topo.pod, mtu, FAR_HOST)?);
            qcfg = qcfg
                .nic(Nic::Tap {
                    ifname: kernel_path::TAP.into(),
                })
                .in_netns(&topo.pod);
        }
    }
    let (mut vm, lease) = rig::start(&qcfg, true)?;
    let lease = lease.context("no lease")?;
    let boot = vm.boot_time().unwrap_or_default();
    results.boots.push((backend, mtu, boot.as_secs_f64()));
    let qemu_pid = vm.pid();
    match bench::comm(qemu_pid) {
        Some(c) if c.starts_with("qemu-system") => {}
        other => bail!("pid {qemu_pid} is {other:?}, not QEMU"),
    }
    let c = vm.console();
    let guest_mtu: u32 = c
        .run_ok("cat /sys/class/net/eth0/mtu", T)?
        .trim()
        .parse()
        .context("the guest's eth0 MTU")?;
    if guest_mtu != mtu {
        bail!(
            "the guest's eth0 has MTU {guest_mtu}, not {mtu} (DHCP offered {:?})",
            lease.mtu()
        );
    }
    if lease.ip() != Some(&kernel_path::GUEST_ADDR.to_string()) {
        bail!(
            "the guest got {:?}, not {}",
            lease.ip(),
            kernel_path::GUEST_ADDR
        );
    }
    // what the NIC negotiated (virtio feature bits, bit 0 first): the stream netdev has no
    // virtio-net header, so QEMU offers the guest no checksum or segmentation offload there
    if let Ok(bits) = c.run_ok("cat /sys/class/net/eth0/device/features", T) {
        println!(
            "guest virtio-net features: {} ({})",
            bits.trim(),
            virtio_offloads(bits.trim())
        );
    }
    // the path works (and the gateway's MAC is in the ARP table)
    c.run_ok(&format!("ping -c 2 -W 5 {FAR_HOST}"), T)
        .context("a first ping to the far host")?;
    if let Some(pw) = &podwire {
        mem.after_dhcp = Some(bench::mem_status(pw.pid())?);
    }
    let mut g = Guest {
        vm,
        podwire,
        qemu_pid,
    };

    for &t in tests {
        wait_for_quiet(env.args.quiet_wait, &[g.qemu_pid]);
        println!("--- {} on {}", t.label(), backend.name());
        let mut f = Figure::default();
        let r = match t {
            Test::Tcp {
                reverse, streams, ..
            } => tcp(env, &mut g, reverse, streams, &mut f),
            Test::Pktgen { size } => run_pktgen(env, &mut g, &topo.far, size, &mut f),
            Test::Ping => ping(&mut g, &mut f),
            Test::Rr { udp } => rr(env, &mut g, udp, &mut f),
            _ => Ok(()),
        };
        let r = r.and_then(|_| g.check_alive());
        if let Err(e) = r {
            let reason = short_reason(&e);
            println!("FAILED: {reason}");
            f.error = Some(reason);
        }
        print_figure(t, &f);
        results.record(backend, t, f);
        done.push(t);
        if !g.vm.is_running() {
            bail!("QEMU is gone");
        }
    }
    if let Some(pw) = &g.podwire {
        mem.end = Some(bench::mem_status(pw.pid())?);
    }
    let _ = g.vm.poweroff(Duration::from_secs(30));
    if let Some(Served::Podwire(pw)) = g.podwire.as_mut() {
        let _ = util::wait_until("podwire's session counters", Duration::from_secs(5), || {
            Ok(pw.log().contains("session counters"))
        });
        if let Some(l) = pw
            .log()
            .lines()
            .rev()
            .find(|l| l.contains("session counters"))
        {
            println!("podwire: {}", l.trim());
        }
        pw.stop();
    }
    Ok(())
}

/// The offload-related virtio-net features set in a sysfs feature string (bit 0 first).
pub(crate) fn virtio_offloads(bits: &str) -> String {
    const NAMES: [(usize, &str); 8] = [
        (0, "CSUM"),
        (1, "GUEST_CSUM"),
        (7, "GUEST_TSO4"),
        (8, "GUEST_TSO6"),
        (11, "HOST_TSO4"),
        (12, "HOST_TSO6"),
        (15, "MRG_RXBUF"),
        (29, "EVENT_IDX"),
    ];
    let on: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| bits.as_bytes().get(*bit) == Some(&b'1'))
        .map(|(_, name)| *name)
        .collect();
    if on.is_empty() {
        "no offloads".into()
    } else {
        on.join(" ")
    }
}

pub(crate) fn start_rr_server(far: &Netns, rr_bin: &Path) -> Result<Proc> {
    let at = format!("{FAR_HOST}:{RR_PORT}");
    let mut p = far.spawn("rr", &[&rr_bin.display().to_string(), "serve", &at])?;
    far::wait_service(
        far,
        &mut p,
        podwire_perf::netns::Proto::Tcp,
        FAR_HOST,
        RR_PORT,
    )?;
    Ok(p)
}

pub(crate) fn tcp(
    env: &Env,
    g: &mut Guest,
    reverse: bool,
    streams: u32,
    f: &mut Figure,
) -> Result<()> {
    let seconds = env.args.seconds;
    let cmd = format!(
        "rm -f {JSON_FILE} {ERR_FILE}; iperf3 -c {FAR_HOST} -p {} -t {seconds} -P {streams} {} -J \
         --connect-timeout 10000 > {JSON_FILE} 2> {ERR_FILE}",
        far::IPERF3_PORT,
        if reverse { "-R" } else { "" },
    );
    let w = Window::start(g.podwire_pid(), Some(g.qemu_pid))?;
    let run =
        g.vm.console()
            .run(&cmd, Duration::from_secs(u64::from(seconds) + 90));
    w.end(f)?;
    let run = run.context("iperf3 in the guest")?;
    let json =
        g.vm.console()
            .run_ok(&format!("cat {JSON_FILE}; echo; cat {ERR_FILE}"), T)?;
    let parsed = bench::parse_iperf3_json(&json);
    if run.code != 0 {
        match parsed {
            Err(e) => return Err(e.context(format!("iperf3 exited {}", run.code))),
            Ok(_) => bail!("iperf3 exited {}: {}", run.code, util::tail(&json, 300)),
        }
    }
    let r = parsed?;
    f.value = Some(r.bits_per_second / 1e9);
    f.bytes = Some(r.bytes);
    f.retransmits = r.retransmits;
    // the iperf3 server on the far host needs a moment before the next test
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

pub(crate) fn run_pktgen(
    env: &Env,
    g: &mut Guest,
    far: &Netns,
    size: u32,
    f: &mut Figure,
) -> Result<()> {
    let c = g.vm.console();
    c.run_ok(&format!("ping -c 1 -W 5 {FAR_HOST}"), T)?;
    let arp = c.run_ok("cat /proc/net/arp", T)?;
    let gw = kernel_path::GATEWAY.to_string();
    let mac = pktgen::arp_mac(&arp, &gw)
        .with_context(|| format!("no ARP entry for the gateway {gw}:\n{arp}"))?;
    let job = PktgenJob {
        iface: "eth0".into(),
        pkt_size: size,
        src: kernel_path::GUEST_ADDR.to_string(),
        dst: FAR_HOST.to_string(),
        dst_mac: mac.clone(),
        seconds: env.args.seconds,
    };
    let before = pktgen::sink_packets(far)?;
    let w = Window::start(g.podwire_pid(), Some(g.qemu_pid))?;
    let out = g.vm.console().run(
        &pktgen::script(&job),
        Duration::from_secs(u64::from(env.args.seconds) + 120),
    );
    // what is still queued arrives within moments
    std::thread::sleep(Duration::from_millis(300));
    w.end(f)?;
    let after = pktgen::sink_packets(far)?;
    let out = out.context("pktgen in the guest")?;
    let r = pktgen::parse_result(&out.output)?;
    let received = after - before;
    f.sent = Some(r.sent);
    f.received = Some(received);
    f.offered = Some(r.sent as f64 / r.seconds);
    f.value = Some(received as f64 / r.seconds);
    f.bytes = Some(received * u64::from(size));
    f.note = format!(
        "pktgen: {:.2} s, {} errors, dst MAC {mac}",
        r.seconds, r.errors
    );
    Ok(())
}

pub(crate) fn ping(g: &mut Guest, f: &mut Figure) -> Result<()> {
    let w = Window::start(g.podwire_pid(), Some(g.qemu_pid))?;
    let out =
        g.vm.console()
            .run(&format!("ping -c 20 -i 0.2 {FAR_HOST} 2>&1"), T)?;
    w.end(f)?;
    let p = latency::parse_ping(&out.output)?;
    f.value = Some(p.avg_ms);
    f.sent = Some(p.transmitted);
    f.received = Some(p.received);
    f.note = format!(
        "min/avg/max {:.3}/{:.3}/{:.3} ms",
        p.min_ms, p.avg_ms, p.max_ms
    );
    Ok(())
}

/// The guest's virtio-net interrupts so far: (RX queue, TX queue), from /proc/interrupts.
fn guest_net_interrupts(g: &mut Guest) -> Result<(u64, u64)> {
    let out =
        g.vm.console()
            .run("cat /proc/interrupts", Duration::from_secs(20))?;
    Ok(latency::virtio_net_interrupts(&out.output))
}

pub(crate) fn rr(env: &Env, g: &mut Guest, udp: bool, f: &mut Figure) -> Result<()> {
    let irqs_before = guest_net_interrupts(g)?;
    let w = Window::start(g.podwire_pid(), Some(g.qemu_pid))?;
    let out = g.vm.console().run(
        &format!(
            "{GUEST_RR} rr {}{FAR_HOST}:{RR_PORT} {} 1 2>&1",
            if udp { "--udp " } else { "" },
            env.args.seconds
        ),
        Duration::from_secs(u64::from(env.args.seconds) + 60),
    )?;
    w.end(f)?;
    let rr = latency::parse_rr(&out.output)?;
    let (n, s) = (rr.transactions, rr.seconds);
    f.value = Some(n as f64 / s);
    f.received = Some(n);
    f.note = format!("{n} transactions in {s:.2} s, 1 byte each way");
    if let Some((p50, p99, p999)) = rr.percentiles_us {
        f.note += &format!("; round trip p50 {p50} µs, p99 {p99} µs, p99.9 {p999} µs");
    }
    if rr.lost > 0 {
        f.note += &format!("; {} lost", rr.lost);
    }
    let irqs_after = guest_net_interrupts(g)?;
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / n.max(1) as f64;
    f.note += &format!(
        "; guest interrupts per transaction: RX {:.2}, TX {:.2}",
        per(irqs_before.0, irqs_after.0),
        per(irqs_before.1, irqs_after.1)
    );
    Ok(())
}

// -------------------------------------------------------- testpmd session ----

pub(crate) fn run_testpmd_session(env: &Env, backend: Backend, results: &mut Results) {
    let tests = [
        Test::TxOnly { size: 64 },
        Test::TxOnly { size: 1400 },
        Test::RxOnly { size: 64 },
        Test::RxOnly { size: 1400 },
    ];
    let mut mem = Memory::default();
    let mut done = Vec::new();
    let r = testpmd_session(env, backend, &tests, &mut mem, &mut done, results);
    if let Err(e) = r {
        let reason = short_reason(&e);
        println!("TESTPMD SESSION FAILED: {reason}");
        for t in tests {
            if !done.contains(&t) {
                results.record(backend, t, Figure::failed(reason.clone()));
            }
        }
    }
    results.memory.entry(backend).or_default().push((0, mem));
}

pub(crate) fn testpmd_session(
    env: &Env,
    backend: Backend,
    tests: &[Test],
    mem: &mut Memory,
    done: &mut Vec<Test>,
    results: &mut Results,
) -> Result<()> {
    if !util::have_tool(&testpmd::binary()) {
        bail!("dpdk-testpmd is not installed (apt-get install dpdk-dev)");
    }
    let topo = PodTopology::create()?;
    let dir = util::TempDir::new("bench-testpmd")?;
    let _sink = pktgen::install_sink(&topo.far)?;
    let o = ServeOptions {
        mtu: None,
        mac: Some(qemu::GUEST_MAC),
        udp_forward: Some(FWD_UDP_PORT),
        stream: false,
    };
    let mut pw = Served::spawn(env, backend, &topo.pod, &dir.join("vhost.sock"), &o)?;
    mem.no_guest = Some(bench::mem_status(pw.pid())?);
    let seconds = env.args.seconds;
    for &t in tests {
        wait_for_quiet(env.args.quiet_wait, &[]);
        println!("--- {} on {}", t.label(), backend.name());
        let mut f = Figure::default();
        let r = match t {
            Test::TxOnly { size } => txonly(&pw, &topo.far, size, seconds, &mut f),
            Test::RxOnly { size } => rxonly(env, &pw, &topo.far, size, seconds, &mut f),
            _ => Ok(()),
        };
        let r = r.and_then(|_| pw.ensure_running());
        if let Err(e) = r {
            let reason = short_reason(&e);
            println!("FAILED: {reason}");
            f.error = Some(reason);
        }
        print_figure(t, &f);
        results.record(backend, t, f);
        done.push(t);
        // the backend notices the frontend left
        std::thread::sleep(Duration::from_millis(500));
    }
    mem.end = Some(bench::mem_status(pw.pid())?);
    pw.stop();
    Ok(())
}

pub(crate) fn txonly(
    pw: &Served,
    far: &Netns,
    size: u32,
    seconds: u32,
    f: &mut Figure,
) -> Result<()> {
    let mode = testpmd::Mode::TxOnly {
        size,
        src: kernel_path::GUEST_ADDR.to_string(),
        dst: FAR_HOST.to_string(),
    };
    let tp = Testpmd::start(pw.socket(), qemu::GUEST_MAC, &mode)?;
    let before = pktgen::sink_packets(far)?;
    let w = Window::start(Some(pw.pid()), None)?;
    std::thread::sleep(Duration::from_secs(u64::from(seconds)));
    let t = w.t0.elapsed().as_secs_f64();
    let log = tp.log_path().to_path_buf();
    let (stats, forwarded) = tp
        .stop()
        .with_context(|| format!("testpmd's log: {}", log.display()))?;
    std::thread::sleep(Duration::from_millis(300));
    w.end(f)?;
    let after = pktgen::sink_packets(far)?;
    let received = after - before;
    f.received = Some(received);
    f.sent = None;
    f.value = Some(received as f64 / t);
    f.offered = Some(stats.tx_packets as f64 / forwarded.as_secs_f64());
    f.bytes = Some(received * u64::from(size));
    f.note = format!(
        "testpmd: {} packets on the ring in {:.2} s ({} more refused: ring full); \
         far host counted {received} in the {t:.2} s window",
        stats.tx_packets,
        forwarded.as_secs_f64(),
        stats.tx_dropped
    );
    Ok(())
}

pub(crate) fn rxonly(
    env: &Env,
    pw: &Served,
    far: &Netns,
    size: u32,
    seconds: u32,
    f: &mut Figure,
) -> Result<()> {
    let tp = Testpmd::start(pw.socket(), qemu::GUEST_MAC, &testpmd::Mode::RxOnly)?;
    let payload = size.saturating_sub(42).max(1).to_string();
    let to = format!("{POD_ADDR}:{FWD_UDP_PORT}");
    let w = Window::start(Some(pw.pid()), None)?;
    let out = far.exec(&[
        &env.rr_bin.display().to_string(),
        "flood",
        &to,
        &seconds.to_string(),
        &payload,
        &pktgen::SRC_PORT.to_string(),
    ]);
    std::thread::sleep(Duration::from_millis(300));
    w.end(f)?;
    let (stats, _) = tp.stop()?;
    let (sent, s) = latency::parse_flood(&out?)?;
    f.sent = Some(sent);
    f.received = Some(stats.rx_packets);
    f.offered = Some(sent as f64 / s);
    f.value = Some(stats.rx_packets as f64 / s);
    f.bytes = Some(stats.rx_packets * u64::from(size));
    f.note = format!(
        "far host sent {sent} UDP datagrams ({payload}-byte payload) to the pod's port \
         {FWD_UDP_PORT} in {s:.2} s; testpmd received {}",
        stats.rx_packets
    );
    Ok(())
}
