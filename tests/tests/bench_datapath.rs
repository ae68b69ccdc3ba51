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
    Lab, TestCgroups,
    bench::{BpfStats, Row, per_packet, record},
    send_udp_as, send_udp_in,
};
use ipnet::IpNet;

const PACKETS: u32 = 200_000;
const UID: u32 = 4501;

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
    let _stats = BpfStats::on();
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

/// ns per packet of the classifier and of the empty program, for `send` sending `PACKETS`.
fn measure_with(dp: &Datapath, floor: &Floor, send: impl Fn(u32)) -> (f64, f64) {
    send(10_000);
    let (before, _) = dp.program_stats().unwrap();
    let floor_before = floor.stats();
    send(PACKETS);
    let (after, _) = dp.program_stats().unwrap();
    let floor_after = floor.stats();
    let (runs, ns) = per_packet(before, after);
    assert!(runs >= u64::from(PACKETS), "classifier ran {runs} times");
    (ns, per_packet(floor_before, floor_after).1)
}

#[test]
#[ignore = "benchmark: cargo xtask bench"]
fn classifier_cost_with_cgroup_slices() {
    let _stats = BpfStats::on();
    let lab = Lab::new();
    let mut dp = Datapath::open(&lab.datapath_options()).unwrap();
    let floor = Floor::attach(&lab);
    let cg = TestCgroups::new();
    let tenant = cg.make("tenant");
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    let by_uid = |n| {
        send_udp_as(UID, dst, n, 64);
    };
    let in_cgroup = |n| {
        send_udp_in(&tenant, None, None, dst, n, 64);
    };
    let none = std::collections::HashSet::new();
    // Slots for both xids, as the agent gives them at a sync, so only the xid's lookup differs.
    let cgroup_xid = 0x8000_0001;
    by_uid(1);
    dp.set_cgroups(&HashMap::from([(cg.id("tenant"), cgroup_xid)]), 1 << 2)
        .unwrap();
    in_cgroup(1);
    dp.tend_counters(&dp.snapshot().unwrap(), &none).unwrap();

    dp.set_cgroups(&HashMap::new(), 0).unwrap();
    let (uid_only, floor_a) = measure_with(&dp, &floor, by_uid);
    // 1,000 tenant cgroups at levels 2 and 3 (a uid's packet pays a helper call per level).
    let mut map: HashMap<u64, u32> = (0..999u64)
        .map(|i| (1 << 40 | i, 0x9000_0000 + i as u32))
        .collect();
    map.insert(cg.id("tenant"), cgroup_xid);
    dp.set_cgroups(&map, 1 << 2 | 1 << 3).unwrap();
    let (uid_beside, floor_b) = measure_with(&dp, &floor, by_uid);
    let (cgroup, floor_c) = measure_with(&dp, &floor, in_cgroup);
    let snap = dp.snapshot().unwrap();
    assert!(snap.offered[&cgroup_xid].general.packets >= u64::from(PACKETS));
    println!(
        "classifier per packet with cgroup slices (bpf_stats; empty program {floor_a:.1}, {floor_b:.1}, {floor_c:.1} ns):"
    );
    record(Row {
        group: "datapath",
        what: "classifier, uid slices only (no cgroup slices)",
        value: uid_only,
        unit: "ns/packet",
        ratio: None,
        target: "no change",
        ..Row::default()
    });
    record(Row {
        group: "datapath",
        what: "  a uid's packet beside 1k cgroup slices (2 levels)",
        value: uid_beside,
        unit: "ns/packet",
        ratio: Some((uid_beside / uid_only, "uid only")),
        target: "≤ uid only + 60",
        ..Row::default()
    });
    record(Row {
        group: "datapath",
        what: "  a cgroup slice's packet (1k cgroup slices)",
        value: cgroup,
        unit: "ns/packet",
        ratio: Some((cgroup / uid_only, "uid only")),
        target: "≤ uid only + 60",
        ..Row::default()
    });
}

/// The classifier of the object at `path`, loaded as the agent loads it (the lab interface's
/// Ethernet header, xid by uid) with maps of its own, and attached after the others.
fn attach_classifier(lab: &Lab, path: &std::path::Path) -> Ebpf {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let settings = bwmon_common::Settings {
        link_header: bwmon_common::ETH_HLEN,
        ..Default::default()
    };
    let mut ebpf = aya::EbpfLoader::new()
        .override_global(bwmon_common::names::SETTINGS, &settings, true)
        .load(&bytes)
        .unwrap();
    let prog: &mut SchedClassifier = ebpf
        .program_mut(bwmon_common::names::CLASSIFIER)
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().unwrap();
    prog.attach_with_options(
        &lab.host_if,
        TcAttachType::Egress,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    )
    .unwrap();
    ebpf
}

fn stats_of(ebpf: &Ebpf) -> ProgramStats {
    let info = ebpf
        .program(bwmon_common::names::CLASSIFIER)
        .unwrap()
        .info()
        .unwrap();
    ProgramStats {
        run_count: info.run_count(),
        run_time: info.run_time(),
    }
}

/// Benchmark, by hand (`BWMON_BASELINE_OBJECT=<an older build's target/bpf/…/release/bwmon>`):
/// this classifier without cgroup slices beside the older one, both attached, on the same
/// packets: what a host without cgroup slices pays for them (one array read).
#[test]
#[ignore = "benchmark: needs BWMON_BASELINE_OBJECT"]
fn classifier_without_cgroup_slices_beside_a_baseline() {
    let Some(baseline) = std::env::var_os("BWMON_BASELINE_OBJECT") else {
        eprintln!("BWMON_BASELINE_OBJECT is not set: nothing to compare with");
        return;
    };
    let _stats = BpfStats::on();
    let lab = Lab::new();
    let ours = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bpf/bpfel-unknown-none/release/bwmon");
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    let mut runs: Vec<(f64, f64)> = Vec::new();
    // Alternate which is attached first, three rounds each.
    for round in 0..6 {
        let (first, second) = if round % 2 == 0 {
            (ours.clone(), PathBuf::from(&baseline))
        } else {
            (PathBuf::from(&baseline), ours.clone())
        };
        let a = attach_classifier(&lab, &first);
        let b = attach_classifier(&lab, &second);
        send_udp_as(UID, dst, 10_000, 64);
        let (a0, b0) = (stats_of(&a), stats_of(&b));
        send_udp_as(UID, dst, PACKETS, 64);
        let (a1, b1) = (stats_of(&a), stats_of(&b));
        let (na, nb) = (per_packet(a0, a1).1, per_packet(b0, b1).1);
        runs.push(if round % 2 == 0 { (na, nb) } else { (nb, na) });
    }
    let med = |f: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        (v[2] + v[3]) / 2.0
    };
    let (ours_ns, base_ns) = (med(|r| r.0), med(|r| r.1));
    println!("runs (ours, baseline): {runs:?}");
    record(Row {
        group: "datapath",
        what: "classifier, no cgroup slices (this build)",
        value: ours_ns,
        unit: "ns/packet",
        ratio: Some((ours_ns / base_ns, "baseline")),
        target: "no change",
        ..Row::default()
    });
    record(Row {
        group: "datapath",
        what: "  the baseline build, same packets",
        value: base_ns,
        unit: "ns/packet",
        ratio: None,
        target: "",
        ..Row::default()
    });
}
