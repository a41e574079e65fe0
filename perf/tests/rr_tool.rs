//! `podwire-rr`, the request/response tool the benchmark puts into the test guest, between
//! the pod and far-host namespaces (no guest, no backend): its server answers TCP and UDP on
//! one port, and `rr` measures both, with round-trip percentiles, in the format the
//! benchmark parses.

use podwire_perf::bench::latency;
use podwire_perf::far;
use podwire_perf::netns::{PodTopology, Proto, FAR_HOST};
use podwire_perf::util;

const RR: &str = env!("CARGO_BIN_EXE_podwire-rr");
const PORT: u16 = 7001;

#[test]
fn tcp_and_udp_request_response_with_percentiles() {
    if !util::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let topo = PodTopology::create().unwrap();
    let at = format!("{FAR_HOST}:{PORT}");
    let mut server = topo.far.spawn("rr", &[RR, "serve", &at]).unwrap();
    far::wait_service(&topo.far, &mut server, Proto::Tcp, FAR_HOST, PORT).unwrap();
    far::wait_service(&topo.far, &mut server, Proto::Udp, FAR_HOST, PORT).unwrap();
    for udp in [false, true] {
        let mut argv = vec![RR, "rr"];
        if udp {
            argv.push("--udp");
        }
        argv.extend([at.as_str(), "1", "1"]);
        let out = topo.pod.exec(&argv).unwrap();
        let rr = latency::parse_rr(&out).unwrap();
        assert!(rr.transactions > 100, "udp {udp}: {out}");
        let (p50, p99, p999) = rr.percentiles_us.expect("percentiles");
        assert!(0 < p50 && p50 <= p99 && p99 <= p999, "udp {udp}: {out}");
        assert!(rr.lost * 100 <= rr.transactions, "udp {udp}: {out}");
    }
}
