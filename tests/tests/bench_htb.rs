//! Benchmark (run by `cargo xtask bench`): installing 10,000 slices (20,000 leaves) and changing
//! 10,000 ceilings through bwmon's netlink batches, next to `tc -batch` doing the same on the
//! same machine in the same run.

use std::{io::Write, time::Instant};

use bwmon_agent::{
    class::TrafficClass,
    htb::{ClassParams, Htb, Leaf, Minor, Op, TreeSpec},
    units::BitsPerSec,
};
use bwmon_tests::{
    Lab,
    bench::{Row, record},
    cmd,
};

const SLICES: u16 = 10_000;
const SPEC: TreeSpec = TreeSpec {
    node_cap: BitsPerSec(1_000_000_000),
    exempt_max: BitsPerSec(1_000_000_000),
};

fn leaves(ceil: u64) -> Vec<Op> {
    (0..SLICES)
        .flat_map(|i| {
            TrafficClass::ALL.map(|class| {
                Op::Upsert(Leaf {
                    minor: Minor(0x100 + 2 * i + u16::from(class == TrafficClass::Exempt)),
                    class,
                    params: ClassParams {
                        rate: BitsPerSec(1000),
                        ceil: BitsPerSec(ceil),
                        quantum: 1600,
                    },
                })
            })
        })
        .collect()
}

fn tc_batch(lab: &Lab, verb: &str, ceil: &str) -> f64 {
    let path = std::env::temp_dir().join(format!("bwmon-bench-{}.tc", lab.host_if));
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..SLICES {
        for (offset, parent) in [(0, "1:10"), (1, "1:20")] {
            writeln!(
                f,
                "class {verb} dev {} parent {parent} classid 1:{:x} htb rate 1kbit ceil {ceil} quantum 1600",
                lab.host_if,
                0x100 + 2 * u32::from(i) + offset
            )
            .unwrap();
        }
    }
    drop(f);
    let t = Instant::now();
    cmd("tc", &["-batch", path.to_str().unwrap()]);
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    secs
}

#[test]
#[ignore = "benchmark: cargo xtask bench"]
fn install_and_change_10k_slices_vs_tc_batch() {
    let ours_lab = Lab::new();
    let tc_lab = Lab::new();
    let mut htb = Htb::open(&ours_lab.host_if).unwrap();
    htb.ensure_tree(&SPEC, false).unwrap();
    let mut tc_htb = Htb::open(&tc_lab.host_if).unwrap();
    tc_htb.ensure_tree(&SPEC, false).unwrap();

    let t = Instant::now();
    htb.apply(&leaves(1_000_000_000)).unwrap();
    let ours_install = t.elapsed().as_secs_f64();
    let tc_install = tc_batch(&tc_lab, "add", "1gbit");

    let t = Instant::now();
    htb.apply(&leaves(1_000_000)).unwrap();
    let ours_change = t.elapsed().as_secs_f64();
    let tc_change = tc_batch(&tc_lab, "change", "1mbit");

    let t = Instant::now();
    let listed = htb.list().unwrap();
    let ours_list = t.elapsed().as_secs_f64();
    assert_eq!(listed.len(), 2 * usize::from(SLICES) + 5);
    assert!(
        listed
            .iter()
            .filter(|c| c.minor >= Minor(0x100))
            .all(|c| c.params.ceil == BitsPerSec(1_000_000))
    );
    let t = Instant::now();
    let _ = cmd("tc", &["-s", "class", "show", "dev", &tc_lab.host_if]);
    let tc_list = t.elapsed().as_secs_f64();

    println!("HTB, {SLICES} slices (two leaves each), bwmon's netlink vs tc -batch:");
    for (what, ours, tc) in [
        (
            "install 20k leaves (bwmon netlink)",
            ours_install,
            tc_install,
        ),
        (
            "change 20k ceilings (bwmon netlink)",
            ours_change,
            tc_change,
        ),
        (
            "list 20k leaves with stats (bwmon netlink)",
            ours_list,
            tc_list,
        ),
    ] {
        record(Row {
            group: "htb",
            what,
            value: ours * 1e3,
            unit: "ms",
            ratio: Some((ours / tc, "tc")),
            target: "",
            ..Row::default()
        });
    }
}
