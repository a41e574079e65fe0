//! Boots the test guest (no NIC) and drives its shell over the console.

use podwire_perf::{guest, qemu, util, Qemu, QemuConfig};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

#[test]
fn guest_boots_and_runs_commands() {
    let missing =
        util::missing_tools(&[&qemu::qemu_binary(), "apt-get", "dpkg", "cpio", "busybox"]);
    if !missing.is_empty() {
        eprintln!("SKIPPED guest_boots_and_runs_commands: missing tools: {missing:?}");
        return;
    }
    let t0 = Instant::now();
    let image = guest::image().expect("building the guest image");
    eprintln!(
        "guest image ready in {:?}: kernel {}",
        t0.elapsed(),
        image.kernel_version
    );

    let cfg = QemuConfig::new(&image).name("boot");
    let mut vm = Qemu::boot(&cfg).expect("booting the guest");
    eprintln!("guest booted in {:?}", vm.boot_time().unwrap());

    let r = vm.run("echo hello", T).unwrap();
    assert_eq!(r.code, 0);
    assert_eq!(r.output, "hello\n");

    let rel = vm.run_ok("uname -r", T).unwrap();
    assert_eq!(rel.trim(), image.kernel_version);

    // exit codes, stderr, shell state
    let r = vm.run("ls /nonexistent", T).unwrap();
    assert_ne!(r.code, 0);
    assert!(r.output.contains("nonexistent"), "{r:?}");
    vm.run_ok("cd /tmp && X=podwire", T).unwrap();
    assert_eq!(vm.run_ok("echo $X $(pwd)", T).unwrap(), "podwire /tmp\n");

    // every module /init loaded is there, and the tools run
    let lsmod = vm.run_ok("cut -d' ' -f1 /proc/modules", T).unwrap();
    for m in &image.modules {
        let name = m.trim_end_matches(".ko").replace('-', "_");
        assert!(
            lsmod.lines().any(|l| l == name),
            "{name} not loaded:\n{lsmod}"
        );
    }
    for tool in [
        "iperf3 --version",
        "socat -V",
        "dhcpcd --version",
        "udhcpc --help",
    ] {
        let r = vm.run(tool, T).unwrap();
        assert!(r.code == 0 || tool.starts_with("udhcpc"), "{tool}: {r:?}");
    }
    // no NIC was given
    let links = vm.run_ok("ip -o link", T).unwrap();
    assert!(!links.contains("eth0"), "{links}");
    assert!(vm
        .run_ok("cat /proc/sys/net/ipv4/ping_group_range", T)
        .is_ok());

    // a command that outlives its deadline is interrupted; the shell goes on
    assert!(vm.run("sleep 100", Duration::from_secs(2)).is_err());
    vm.console().clear_failed();
    assert_eq!(vm.run_ok("echo after", T).unwrap(), "after\n");

    vm.poweroff(Duration::from_secs(60)).unwrap();
    assert!(!vm.is_running());
}
