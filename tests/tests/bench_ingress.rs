//! Benchmark (run by `cargo xtask bench`, not by the test suite): the download path. The
//! ingress counter's per-packet cost from `bpf_stats`, and downloads through bwmon against the
//! bare veth: one TCP flow and 64-byte UDP datagrams received, rounds alternating the two.

use std::net::SocketAddr;

use bwmon_agent::datapath::Datapath;
use bwmon_tests::{
    Lab,
    bench::{BpfStats, Row, median_spread, per_packet, record, spread_text},
    iperf3_download_as, iperf3_udp_download_pps_as, udp_drain, udp_socket_as,
};

const UID: u32 = 4601;
const ROUNDS: usize = 5;

#[test]
#[ignore = "benchmark: cargo xtask bench"]
fn ingress_cost_and_downloads_through_bwmon_against_bare() {
    let stats = BpfStats::off();
    let lab = Lab::new();
    let host = std::net::IpAddr::V4(lab.host_v4());

    // Throughput: rounds of (bare, through bwmon), the datapath loaded for the second only.
    let (mut tcp, mut udp) = (Vec::new(), Vec::new());
    let mut ratios = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let pair = |with: bool| {
            let dp = with.then(|| Datapath::open(&lab.datapath_options()).unwrap());
            let port = 5800 + 10 * round as u16 + u16::from(with);
            let server = lab.iperf3_server(port);
            let gbits = iperf3_download_as(UID, lab.general_v4.into(), port, 3, &[]) / 1e9;
            drop(server);
            let server = lab.iperf3_server(port + 2);
            let pps = iperf3_udp_download_pps_as(UID, lab.general_v4.into(), port + 2, 3, 64);
            drop(server);
            if dp.is_some() {
                bwmon_agent::datapath::teardown(&lab.pin_root, &lab.host_if).unwrap();
            }
            (gbits, pps)
        };
        let (bare_tcp, bare_pps) = pair(false);
        let (bw_tcp, bw_pps) = pair(true);
        tcp.push((bare_tcp, bw_tcp));
        udp.push((bare_pps, bw_pps));
        ratios.0.push(bw_tcp / bare_tcp);
        ratios.1.push(bw_pps / bare_pps);
    }

    // Cost: 200,000 64-byte datagrams received by a uid's socket, statistics on.
    drop(stats);
    let _stats = BpfStats::on();
    let dp = Datapath::open(&lab.datapath_options()).unwrap();
    let sock = udp_socket_as(UID, SocketAddr::new(host, 0));
    let to = sock.local_addr().unwrap();
    lab.send_udp_from_ns(lab.general_v4.into(), to, 10_000, 64);
    udp_drain(&sock);
    let (cg0, tc0) = dp.ingress_program_stats().unwrap();
    lab.send_udp_from_ns(lab.general_v4.into(), to, 200_000, 64);
    udp_drain(&sock);
    let (cg1, tc1) = dp.ingress_program_stats().unwrap();
    let (cg_runs, cg_ns) = per_packet(cg0, cg1);
    let (tc_runs, tc_ns) = per_packet(tc0, tc1);
    assert!(cg_runs >= 150_000, "the cgroup counter ran {cg_runs} times");
    assert!(
        tc_runs >= 150_000,
        "the TC ingress program ran {tc_runs} times"
    );

    let bare_tcp: Vec<f64> = tcp.iter().map(|p| p.0).collect();
    let bare_pps: Vec<f64> = udp.iter().map(|p| p.0).collect();
    let (tcp_ratio, tcp_spread) = median_spread(&ratios.0);
    let (udp_ratio, udp_spread) = median_spread(&ratios.1);
    let (bare_tcp, bare_tcp_spread) = median_spread(&bare_tcp);
    let (bare_pps, _) = median_spread(&bare_pps);
    println!(
        "downloads: TCP bwmon/bare {tcp_ratio:.2} {} (bare {bare_tcp:.1} Gbit/s {}), 64-byte UDP {udp_ratio:.2} {} (bare {bare_pps:.0} pps); per packet: cgroup counter {cg_ns:.0} ns, TC ingress {tc_ns:.0} ns",
        spread_text(tcp_spread),
        spread_text(bare_tcp_spread),
        spread_text(udp_spread),
    );
    record(Row {
        group: "ingress",
        what: "ingress counter per packet, uid slices (cgroup_skb, bpf_stats)",
        value: cg_ns,
        unit: "ns/packet",
        ratio: None,
        target: "",
        ..Row::default()
    });
    record(Row {
        group: "ingress",
        what: "  TC ingress program beside it (returns at once for uid slices)",
        value: tc_ns,
        unit: "ns/packet",
        ratio: None,
        target: "",
        ..Row::default()
    });
    record(Row {
        group: "ingress",
        what: "TCP download through bwmon / bare veth",
        value: tcp_ratio,
        unit: "ratio",
        ratio: None,
        target: "≥ 0.90",
        spread: Some(tcp_spread),
        ..Row::default()
    });
    record(Row {
        group: "ingress",
        what: "64-byte UDP received pps through bwmon / bare veth",
        value: udp_ratio,
        unit: "ratio",
        ratio: None,
        target: "≥ 0.90",
        spread: Some(udp_spread),
        ..Row::default()
    });
}
