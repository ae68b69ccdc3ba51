//! Benchmark (run by `cargo xtask bench`, not by the test suite): the classifier's per-packet
//! cost from the kernel's `bpf_stats`, with empty maps and with 10,000 slices and 10,000 exempt
//! prefixes loaded, side by side in one run.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use bwmon_agent::datapath::{Datapath, ProgramStats};
use bwmon_common::{ClassIds, tc_handle};
use bwmon_tests::{
    Lab,
    bench::{Row, record},
    cmd, send_udp_as,
};
use ipnet::IpNet;

const PACKETS: u32 = 200_000;
const UID: u32 = 4501;

fn per_packet(before: ProgramStats, after: ProgramStats) -> (u64, f64) {
    let runs = after.run_count - before.run_count;
    let ns = (after.run_time - before.run_time).as_nanos() as f64;
    (runs, ns / runs.max(1) as f64)
}

fn measure(lab: &Lab, dp: &Datapath) -> f64 {
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    // Warm up, then measure.
    send_udp_as(UID, dst, 10_000, 64);
    let (before, _) = dp.program_stats().unwrap();
    send_udp_as(UID, dst, PACKETS, 64);
    let (after, _) = dp.program_stats().unwrap();
    let (runs, ns) = per_packet(before, after);
    assert!(runs >= u64::from(PACKETS), "classifier ran {runs} times");
    ns
}

#[test]
#[ignore = "benchmark: cargo xtask bench"]
fn classifier_cost_with_10k_slices_and_10k_prefixes() {
    cmd("sysctl", &["-qw", "kernel.bpf_stats_enabled=1"]);
    let lab = Lab::new();
    let mut dp = Datapath::open(&lab.datapath_options()).unwrap();
    let empty = measure(&lab, &dp);

    let classes: HashMap<u32, ClassIds> = (0..10_000u32)
        .map(|i| {
            (
                UID - 4_000 + i,
                ClassIds {
                    general: tc_handle(1, 0x100 + 2 * i),
                    exempt: tc_handle(1, 0x101 + 2 * i),
                },
            )
        })
        .collect();
    let t = std::time::Instant::now();
    dp.set_classes(&classes).unwrap();
    let classes_ms = t.elapsed().as_millis();
    let prefixes: Vec<IpNet> = (0..5_000u32)
        .map(|i| {
            format!("100.{}.{}.0/24", 64 + i / 256, i % 256)
                .parse()
                .unwrap()
        })
        .chain((0..5_000u32).map(|i| format!("2001:db8:{i:x}::/48").parse().unwrap()))
        .collect();
    let t = std::time::Instant::now();
    dp.set_exempt(&prefixes).unwrap();
    let prefixes_ms = t.elapsed().as_millis();
    let loaded = measure(&lab, &dp);

    let t = std::time::Instant::now();
    let snap = dp.snapshot().unwrap();
    let drain = t.elapsed();
    assert!(snap.offered.contains_key(&UID));
    std::thread::sleep(Duration::from_millis(10));
    println!("classifier per packet (bpf_stats, includes its timing overhead):");
    record(Row {
        group: "datapath",
        what: "classifier, empty maps (bpf_stats)",
        value: empty,
        unit: "ns/packet",
        ratio: None,
        target: "",
    });
    record(Row {
        group: "datapath",
        what: "classifier, 10k slices + 10k prefixes (bpf_stats)",
        value: loaded,
        unit: "ns/packet",
        ratio: Some((loaded / empty, "empty")),
        target: "≤ 200",
    });
    record(Row {
        group: "datapath",
        what: "fill 10k xid → class entries",
        value: classes_ms as f64,
        unit: "ms",
        ratio: None,
        target: "",
    });
    record(Row {
        group: "datapath",
        what: "fill 10k exempt prefixes",
        value: prefixes_ms as f64,
        unit: "ms",
        ratio: None,
        target: "",
    });
    record(Row {
        group: "datapath",
        what: "drain counters (xids + 65,536 class slots)",
        value: drain.as_secs_f64() * 1e3,
        unit: "ms",
        ratio: None,
        target: "",
    });
}
