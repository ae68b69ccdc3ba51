//! Benchmark (run by `cargo xtask bench`, not by the test suite): the classifier's per-packet
//! cost from the kernel's `bpf_stats`, with empty maps (the xid in a counter slot, as the agent
//! gives it one at its next sync, and before that, in the hash) and with 10,000 slices and
//! 10,000 exempt prefixes loaded, side by side in one run; beside it on the same packets an empty TC program
//! (`bwmon-floor`, built with the classifier), whose cost is what `bpf_stats` adds to any run.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use aya::{
    Ebpf,
    programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions},
};
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

/// The empty program, attached to the lab's interface until dropped.
struct Floor(Ebpf);

impl Floor {
    fn attach(lab: &Lab) -> Floor {
        // Built beside the classifier's object by `cargo xtask build`.
        let object = std::env::var_os("BWMON_EBPF_OBJECT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/bpf/bpfel-unknown-none/release/bwmon")
            })
            .with_file_name("bwmon-floor");
        let bytes = std::fs::read(&object)
            .unwrap_or_else(|e| panic!("{}: {e} (cargo xtask build)", object.display()));
        let mut ebpf = Ebpf::load(&bytes).unwrap();
        let prog: &mut SchedClassifier =
            ebpf.program_mut("bwmon_floor").unwrap().try_into().unwrap();
        prog.load().unwrap();
        prog.attach_with_options(
            &lab.host_if,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .unwrap();
        Floor(ebpf)
    }

    fn stats(&self) -> ProgramStats {
        let info = self.0.program("bwmon_floor").unwrap().info().unwrap();
        ProgramStats {
            run_count: info.run_count(),
            run_time: info.run_time(),
        }
    }
}

/// ns per packet of the classifier and of the empty program, on the same packets.
fn measure(lab: &Lab, dp: &Datapath, floor: &Floor) -> (f64, f64) {
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    // Warm up, then measure.
    send_udp_as(UID, dst, 10_000, 64);
    let (before, _) = dp.program_stats().unwrap();
    let floor_before = floor.stats();
    send_udp_as(UID, dst, PACKETS, 64);
    let (after, _) = dp.program_stats().unwrap();
    let floor_after = floor.stats();
    let (runs, ns) = per_packet(before, after);
    assert!(runs >= u64::from(PACKETS), "classifier ran {runs} times");
    let (floor_runs, floor_ns) = per_packet(floor_before, floor_after);
    assert!(
        floor_runs >= u64::from(PACKETS),
        "empty program ran {floor_runs} times"
    );
    (ns, floor_ns)
}

#[test]
#[ignore = "benchmark: cargo xtask bench"]
fn classifier_cost_with_10k_slices_and_10k_prefixes() {
    cmd("sysctl", &["-qw", "kernel.bpf_stats_enabled=1"]);
    let lab = Lab::new();
    let mut dp = Datapath::open(&lab.datapath_options()).unwrap();
    let floor = Floor::attach(&lab);
    let none = std::collections::HashSet::new();
    dp.tend_counters(&dp.snapshot().unwrap(), &none).unwrap();
    // An xid the agent has not given a slot yet (until the next sync): counted in the hash.
    let (unslotted, _) = measure(&lab, &dp, &floor);
    // The next sync gives it one.
    dp.tend_counters(&dp.snapshot().unwrap(), &none).unwrap();
    let (empty, floor_empty) = measure(&lab, &dp, &floor);

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
    let (loaded, floor_loaded) = measure(&lab, &dp, &floor);
    let floor_ns = (floor_empty + floor_loaded) / 2.0;

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
        ..Row::default()
    });
    record(Row {
        group: "datapath",
        what: "  an xid without a counter slot yet (hash)",
        value: unslotted,
        unit: "ns/packet",
        ratio: Some((unslotted / empty, "empty")),
        target: "",
        ..Row::default()
    });
    record(Row {
        group: "datapath",
        what: "classifier, 10k slices + 10k prefixes (bpf_stats)",
        value: loaded,
        unit: "ns/packet",
        ratio: Some((loaded / empty, "empty")),
        target: "≤ 200",
        ..Row::default()
    });
    record(Row {
        group: "datapath",
        what: "empty TC program beside it (bpf_stats' own cost)",
        value: floor_ns,
        unit: "ns/packet",
        ratio: None,
        target: "",
        ..Row::default()
    });
    record(Row {
        group: "datapath",
        what: "classifier's own work (loaded − empty program)",
        value: loaded - floor_ns,
        unit: "ns/packet",
        ratio: None,
        target: "",
        ..Row::default()
    });
    record(Row {
        group: "datapath",
        what: "fill 10k xid → class entries",
        value: classes_ms as f64,
        unit: "ms",
        ratio: None,
        target: "",
        ..Row::default()
    });
    record(Row {
        group: "datapath",
        what: "fill 10k exempt prefixes",
        value: prefixes_ms as f64,
        unit: "ms",
        ratio: None,
        target: "",
        ..Row::default()
    });
    record(Row {
        group: "datapath",
        what: "drain counters (seen xids and minors)",
        value: drain.as_secs_f64() * 1e3,
        unit: "ms",
        ratio: None,
        target: "",
        ..Row::default()
    });
}
