//! Benchmark (run by `cargo xtask bench`): bwmon next to its peers on one lab in one run —
//! single-flow TCP through bare veth, the HTB tree alone, the classifier alone, bwmon whole
//! (10,000 slices configured, 1,000 active), nftables' per-uid counter map and 1,000 linear
//! per-uid rules; 64-byte UDP datagrams per second through bwmon and through HTB alone; cold
//! start with 10,000 slices, one real sync, and the agent's memory.

use std::{
    net::{IpAddr, SocketAddr},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use bwmon_tests::{
    Daemon, Lab,
    bench::{BpfStats, Row, median_spread, record},
    cmd, iperf3_as, iperf3_udp_pps_as, send_udp_as,
};

const SLICES: u32 = 10_000;
const ACTIVE: u32 = 1_000;
const FIRST_UID: u32 = 20_000;
/// Rounds of the four setups, one run of each per round.
const ROUNDS: usize = 5;
const SECS: u32 = 3;
const UDP_PAYLOAD: usize = 64;
/// How long the idle daemon's CPU time is watched.
const IDLE_SECS: u64 = 10;

/// One single-flow TCP run as `uid`, in Gbit/s (receiver side).
fn tcp_gbits(lab: &Lab, uid: u32) -> f64 {
    let port = 6000 + lab.lab_no as u16;
    let _server = lab.iperf3_server(port);
    iperf3_as(uid, IpAddr::V4(lab.general_v4), port, SECS) / 1e9
}

/// One 64-byte UDP run as `uid`, in datagrams per second received.
fn udp_pps(lab: &Lab, uid: u32) -> f64 {
    let port = 6000 + lab.lab_no as u16;
    let _server = lab.iperf3_server(port);
    iperf3_udp_pps_as(uid, IpAddr::V4(lab.general_v4), port, SECS, UDP_PAYLOAD)
}

/// Loads an nftables ruleset from `text` (no shell: the text goes to `nft -f -` on stdin).
fn nft(text: &str) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft (cargo xtask setup installs nftables)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft -f failed on:\n{text}");
}

/// The counter map peer: `meta skuid` → a named counter per uid, one lookup per packet.
fn nft_counter_map(lab: &Lab, table: &str) -> String {
    let mut t = format!("table inet {table} {{\n");
    for uid in FIRST_UID..FIRST_UID + ACTIVE {
        t.push_str(&format!("  counter u{uid} {{ }}\n"));
    }
    t.push_str("  map by_uid {\n    type uid : counter\n    elements = { ");
    let elems: Vec<String> = (FIRST_UID..FIRST_UID + ACTIVE)
        .map(|uid| format!("{uid} : \"u{uid}\""))
        .collect();
    t.push_str(&elems.join(", "));
    t.push_str(" }\n  }\n");
    t.push_str(&format!(
        "  chain out {{\n    type filter hook output priority 0;\n    oifname \"{}\" counter name meta skuid map @by_uid\n  }}\n}}\n",
        lab.host_if
    ));
    t
}

/// The linear peer: one `meta skuid N counter` rule per uid, walked in order.
fn nft_linear(lab: &Lab, table: &str) -> String {
    let mut t =
        format!("table inet {table} {{\n  chain out {{\n    type filter hook output priority 0;\n");
    // The measured uid is the last rule: every packet walks all of them.
    for uid in (FIRST_UID..FIRST_UID + ACTIVE).rev() {
        t.push_str(&format!(
            "    oifname \"{}\" meta skuid {uid} counter\n",
            lab.host_if
        ));
    }
    t.push_str("  }\n}\n");
    t
}

fn nft_counted(table: &str) -> bool {
    let out = cmd("nft", &["list", "table", "inet", table]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains("packets") && !l.contains("packets 0 "))
}

/// User and system CPU time of a process so far, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th
    // and 13th, in clock ticks.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb / 1024.0
}

/// Configured slices in `bwmon status` (besides root and the default pseudo-slice).
fn listed(d: &Daemon) -> usize {
    d.try_status()
        .and_then(|s| {
            s["slices"].as_array().map(|a| {
                a.iter()
                    .filter(|x| x["xid"].as_u64() >= Some(u64::from(FIRST_UID)))
                    .count()
            })
        })
        .unwrap_or(0)
}

fn slice_bytes(d: &Daemon, xid: u32) -> u64 {
    d.try_status()
        .and_then(|s| {
            s["slices"]
                .as_array()?
                .iter()
                .find(|x| x["xid"] == xid)
                .and_then(|x| x["bytes"].as_u64())
        })
        .unwrap_or(0)
}

fn wait_until(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "{what} not within {secs} s");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "benchmark: cargo xtask bench"]
fn bwmon_next_to_its_peers() {
    let _stats = BpfStats::off();
    let lab = Lab::new();
    let uid = FIRST_UID;
    let table = format!("bwbench{}", lab.lab_no);
    println!(
        "bwmon next to its peers (one lab, one run; the setups in turn, median of {ROUNDS} rounds × {SECS} s):"
    );

    nft(&nft_counter_map(&lab, &table));
    let nft_map: Vec<f64> = (0..3).map(|_| tcp_gbits(&lab, uid)).collect();
    assert!(
        nft_counted(&table),
        "the nftables counter map counted nothing"
    );
    cmd("nft", &["delete", "table", "inet", &table]);

    nft(&nft_linear(&lab, &table));
    let nft_lin: Vec<f64> = (0..3).map(|_| tcp_gbits(&lab, uid)).collect();
    assert!(
        nft_counted(&table),
        "the linear nftables rules counted nothing"
    );
    cmd("nft", &["delete", "table", "inet", &table]);

    // bwmon whole: 10,000 slices, budgets it cannot use up, caps far above the link.
    let slices: String = (0..SLICES)
        .map(|i| format!("[[slice]]\nname = \"t{i}\"\nxid = {}\n", FIRST_UID + i))
        .collect();
    let config = "interval = \"2s\"\nnode_cap = \"100gbit\"\nexempt_max = \"100gbit\"\n\
                  [defaults]\nnet_max_kbyte = 1000000000000\nnet_max_rate = 100000000\n";
    let mut d = Daemon::prepare(&lab, config, &slices);
    let t = Instant::now();
    d.restart();
    wait_until("all slices listed", 120, || listed(&d) >= SLICES as usize);
    let cold_listed = t.elapsed().as_secs_f64();
    send_udp_as(uid, SocketAddr::new(lab.general_v4.into(), 9), 1, 64);
    wait_until("a first packet counted", 120, || slice_bytes(&d, uid) > 0);
    let cold_counting = t.elapsed().as_secs_f64();

    let t = Instant::now();
    for i in 0..ACTIVE {
        send_udp_as(
            FIRST_UID + i,
            SocketAddr::new(lab.general_v4.into(), 9),
            1,
            64,
        );
    }
    let leaves = |d: &Daemon| {
        d.try_status()
            .and_then(|s| {
                s["slices"].as_array().map(|a| {
                    a.iter()
                        .filter(|x| x["classes"].as_array().is_some_and(|c| !c.is_empty()))
                        .count()
                })
            })
            .unwrap_or(0)
    };
    wait_until("1,000 active slices with leaves", 120, || {
        leaves(&d) >= ACTIVE as usize
    });
    let first_leaves = t.elapsed().as_secs_f64();
    // A sync with 1,000 active slices whose counters all moved.
    for i in 0..ACTIVE {
        send_udp_as(
            FIRST_UID + i,
            SocketAddr::new(lab.general_v4.into(), 9),
            1,
            64,
        );
    }
    thread::sleep(Duration::from_secs(5));
    let sync_ms = d.status()["last_sync_secs"].as_f64().unwrap() * 1e3;
    let rss = rss_mb(d.pid().unwrap());
    // The kernel memory of every map the daemon holds, as the kernel accounts it, and the
    // same maps at other CPU counts.
    let maps = bwmon_agent::datapath::memory::of_process(d.pid().unwrap()).unwrap();
    let memlock: u64 = maps.iter().map(|m| m.memlock).sum();
    let footprint = bwmon_agent::datapath::memory::Footprint {
        maps: maps.iter().map(|m| m.shape.clone()).collect(),
    };
    let cpus = aya::util::nr_cpus().unwrap() as u64;
    for m in &maps {
        println!("  map {}", m.line(cpus));
    }
    let cpu_before = cpu_secs(d.pid().unwrap());
    thread::sleep(Duration::from_secs(IDLE_SECS));
    let idle_cpu = (cpu_secs(d.pid().unwrap()) - cpu_before) / IDLE_SECS as f64 * 100.0;
    let classes = lab.tc_classes().len();

    // The four setups in turn, ROUNDS times, so drift in the VM's speed falls on all alike:
    // bwmon whole; the classifier alone (daemon killed, its TCX link kept, the tree deleted);
    // HTB alone (restarted, killed, the link unpinned: the same tree, every packet through
    // the default leaf); bare veth (the tree deleted too).
    let link = std::path::Path::new(bwmon_agent::paths::PIN_ROOT)
        .join(&lab.host_if)
        .join("link_egress");
    let delete_tree = || cmd("tc", &["qdisc", "del", "dev", &lab.host_if, "root"]);
    let (mut full, mut classifier, mut htb, mut bare) = (vec![], vec![], vec![], vec![]);
    let (mut full_udp, mut htb_udp, mut bare_udp) = (vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        if round > 0 {
            d.restart();
            wait_until("slices listed again", 120, || listed(&d) >= SLICES as usize);
        }
        let before = slice_bytes(&d, uid);
        full.push(tcp_gbits(&lab, uid));
        full_udp.push(udp_pps(&lab, uid));
        thread::sleep(Duration::from_secs(3));
        assert!(
            slice_bytes(&d, uid) > before + 100_000_000,
            "bwmon did not count the benchmark's traffic"
        );

        d.stop(libc::SIGKILL);
        delete_tree();
        classifier.push(tcp_gbits(&lab, uid));

        d.restart();
        wait_until("slices listed again", 120, || listed(&d) >= SLICES as usize);
        d.stop(libc::SIGKILL);
        std::fs::remove_file(&link).unwrap_or_else(|e| panic!("unpinning {}: {e}", link.display()));
        let (sent_before, _) = lab.root_qdisc_sent();
        htb.push(tcp_gbits(&lab, uid));
        htb_udp.push(udp_pps(&lab, uid));
        let (sent_after, _) = lab.root_qdisc_sent();
        assert!(
            sent_after > sent_before,
            "HTB alone: the tree saw no traffic"
        );

        delete_tree();
        bare.push(tcp_gbits(&lab, uid));
        bare_udp.push(udp_pps(&lab, uid));
        let last = |v: &Vec<f64>| v.last().copied().unwrap_or_default();
        println!(
            "  round {round}: TCP Gbit/s bwmon {:.2}, classifier alone {:.2}, HTB alone {:.2}, \
             bare {:.2}; UDP kpps bwmon {:.1}, HTB alone {:.1}, bare {:.1}",
            last(&full),
            last(&classifier),
            last(&htb),
            last(&bare),
            last(&full_udp) / 1e3,
            last(&htb_udp) / 1e3,
            last(&bare_udp) / 1e3,
        );
    }
    d.teardown();

    println!();
    let g = "throughput";
    // Each setup's median over the rounds with its lowest and highest; a ratio is the median
    // of the rounds' ratios (each round measures both setups back to back), with theirs.
    let row = |what, runs: &[f64], of: Option<(&[f64], &'static str)>, unit, scale: f64, target| {
        let (value, (lo, hi)) = median_spread(runs);
        let ratio = of.map(|(base, name)| {
            let ratios: Vec<f64> = runs.iter().zip(base).map(|(r, b)| r / b).collect();
            let (r, spread) = median_spread(&ratios);
            ((r, name), spread)
        });
        record(Row {
            group: g,
            what,
            value: value * scale,
            unit,
            ratio: ratio.map(|(r, _)| r),
            target,
            spread: Some((lo * scale, hi * scale)),
            ratio_spread: ratio.map(|(_, s)| s),
        })
    };
    let tcp = |what, runs: &[f64], of, target| row(what, runs, of, "Gbit/s", 1.0, target);
    tcp("TCP, bare veth", &bare, None, "");
    tcp(
        "TCP, HTB tree alone (no classifier)",
        &htb,
        Some((&bare, "bare")),
        "",
    );
    tcp(
        "TCP, classifier alone (no tree)",
        &classifier,
        Some((&bare, "bare")),
        "",
    );
    tcp(
        "TCP, bwmon (10k slices, 1k active)",
        &full,
        Some((&bare, "bare")),
        "≥ 0.90 × bare",
    );
    tcp(
        "TCP, bwmon vs HTB alone",
        &full,
        Some((&htb, "HTB alone")),
        "≥ 0.97 × HTB",
    );
    // The nftables peers ran before the rounds (3 runs each): compared to bare's median.
    let bare_median = median_spread(&bare).0;
    for (what, runs) in [
        ("TCP, nftables skuid → counter map", &nft_map),
        ("TCP, nftables 1,000 linear skuid rules", &nft_lin),
    ] {
        let (value, spread) = median_spread(runs);
        record(Row {
            group: g,
            what,
            value,
            unit: "Gbit/s",
            ratio: Some((value / bare_median, "bare")),
            target: "",
            spread: Some(spread),
            ratio_spread: None,
        });
    }
    let pps = |what, runs: &[f64], of, target| row(what, runs, of, "kpps", 1e-3, target);
    pps("UDP 64 B, bare veth", &bare_udp, None, "");
    pps(
        "UDP 64 B, HTB tree alone",
        &htb_udp,
        Some((&bare_udp, "bare")),
        "",
    );
    pps(
        "UDP 64 B, bwmon",
        &full_udp,
        Some((&htb_udp, "HTB alone")),
        "≥ 0.95 × HTB",
    );
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let target = format!(
        "≤ {:.1} (16 MiB + 512 KiB × {cpus})",
        16.0 + 0.5 * cpus as f64
    );
    record(Row {
        group: "memory",
        what: "kernel memory of the maps (memlock), this host",
        value: mib(memlock),
        unit: "MiB",
        target: &target,
        ..Row::default()
    });
    let model = format!("  the same maps, from their sizes, at {cpus} CPUs");
    record(Row {
        group: "memory",
        what: &model,
        value: mib(footprint.at(cpus)),
        unit: "MiB",
        ..Row::default()
    });
    for n in [2u64, 64, 128] {
        let what = format!("  … at {n} possible CPUs");
        let target = format!("≤ {:.0}", 16.0 + 0.5 * n as f64);
        record(Row {
            group: "memory",
            what: &what,
            value: mib(footprint.at(n)),
            unit: "MiB",
            target: &target,
            ..Row::default()
        });
    }
    let s = "scale";
    let one = |what, value, unit, target| {
        record(Row {
            group: s,
            what,
            value,
            unit,
            ratio: None,
            target,
            ..Row::default()
        })
    };
    one(
        "cold start, 10k slices: all listed",
        cold_listed * 1e3,
        "ms",
        "≤ 1000",
    );
    one(
        "cold start, 10k slices: first packet counted",
        cold_counting * 1e3,
        "ms",
        "",
    );
    one(
        "1k newly active slices: all have leaves",
        first_leaves * 1e3,
        "ms",
        "≤ 1 interval (2000)",
    );
    one("one sync, 10k slices / 1k active", sync_ms, "ms", "≤ 100");
    one("agent RSS, 10k slices / 1k active", rss, "MB", "≤ 30");
    one(
        "agent CPU while idle, 10k slices, 2 s interval",
        idle_cpu,
        "% of a core",
        "< 1 at 10 s",
    );
    one("HTB classes in the tree", classes as f64, "classes", "");
}
