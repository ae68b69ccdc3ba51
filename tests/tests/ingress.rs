//! Downloads count too: the ingress counters charge each slice what it received, split by the
//! packet's source against the exempt prefixes, byte for byte what the interface received.

use std::{collections::BTreeMap, net::IpAddr, net::SocketAddr, time::Duration};

use bwmon_agent::datapath::{Datapath, Snapshot};
use bwmon_common::XidSource;
use bwmon_tests::{
    Daemon, Lab, schema::assert_document, tcp_drain, tcp_listener_as, u, udp_drain, udp_socket_as,
};

const UID_A: u32 = 4201;
const UID_B: u32 = 4202;

fn open(lab: &Lab, source: XidSource) -> Datapath {
    let mut opts = lab.datapath_options();
    opts.xid_source = source;
    let mut dp = Datapath::open(&opts).expect("open the datapath");
    let exempt = [
        lab.exempt_net_v4.parse().unwrap(),
        lab.exempt_net_v6.parse().unwrap(),
    ];
    dp.set_exempt(&exempt).unwrap();
    dp
}

/// Received bytes per xid, general + exempt, and the interface's rx counters, read until two
/// readings agree (packets may still be arriving).
fn quiet(lab: &Lab, dp: &Datapath) -> ((u64, u64), Snapshot) {
    let reading = || (lab.host_rx(), dp.snapshot().unwrap());
    let (mut rx, mut snap) = reading();
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        let (rx2, snap2) = reading();
        let same = rx2 == rx && snap2.received == snap.received;
        (rx, snap) = (rx2, snap2);
        if same {
            break;
        }
    }
    (rx, snap)
}

fn received_delta(before: &Snapshot, after: &Snapshot) -> BTreeMap<u32, (u64, u64, u64)> {
    after
        .received
        .iter()
        .map(|(xid, c)| {
            let b = before.received.get(xid).copied().unwrap_or_default();
            let total = c.general.bytes + c.exempt.bytes;
            let total_before = b.general.bytes + b.exempt.bytes;
            (
                *xid,
                (
                    c.general.bytes - b.general.bytes,
                    c.exempt.bytes - b.exempt.bytes,
                    total - total_before,
                ),
            )
        })
        .collect()
}

#[test]
fn udp_downloads_per_uid_are_counted_exactly_and_split_by_source() {
    let lab = Lab::new();
    let dp = open(&lab, XidSource::Uid);
    let host = IpAddr::V4(lab.host_v4());
    let sock_a = udp_socket_as(UID_A, SocketAddr::new(host, 0));
    let sock_b = udp_socket_as(UID_B, SocketAddr::new(host, 0));
    let (to_a, to_b) = (sock_a.local_addr().unwrap(), sock_b.local_addr().unwrap());
    let before = dp.snapshot().unwrap();

    let general = lab.send_udp_from_ns(lab.general_v4.into(), to_a, 300, 1000);
    let exempt = lab.send_udp_from_ns(lab.exempt_v4.into(), to_a, 40, 1200);
    let to_b_len = lab.send_udp_from_ns(lab.general_v4.into(), to_b, 50, 1400);
    assert_eq!(udp_drain(&sock_a), 340);
    assert_eq!(udp_drain(&sock_b), 50);

    let after = dp.snapshot().unwrap();
    let a = after.received[&UID_A];
    let b = after.received[&UID_B];
    assert!(!before.received.contains_key(&UID_A));
    assert_eq!((a.general.packets, a.general.bytes), (300, 300 * general));
    assert_eq!((a.exempt.packets, a.exempt.bytes), (40, 40 * exempt));
    assert_eq!((b.general.packets, b.general.bytes), (50, 50 * to_b_len));
    assert_eq!(b.exempt.packets, 0);
    // Received, not sent: the egress counters did not move for these uids.
    assert!(!after.offered.contains_key(&UID_A) && !after.offered.contains_key(&UID_B));
}

#[test]
fn tcp_downloads_per_uid_match_what_the_interface_received() {
    let lab = Lab::new();
    let dp = open(&lab, XidSource::Uid);
    lab.static_neighbours();
    let host = IpAddr::V4(lab.host_v4());
    let listen_a = tcp_listener_as(UID_A, SocketAddr::new(host, 0));
    let listen_b = tcp_listener_as(UID_B, SocketAddr::new(host, 0));
    let (to_a, to_b) = (
        listen_a.local_addr().unwrap(),
        listen_b.local_addr().unwrap(),
    );
    let ((rx_bytes0, _), first) = quiet(&lab, &dp);

    let drain_a = tcp_drain(UID_A, listen_a);
    let drain_b = tcp_drain(UID_B, listen_b);
    lab.send_tcp_from_ns(lab.general_v4.into(), to_a, 8 << 20)
        .join()
        .unwrap();
    lab.send_tcp_from_ns(lab.exempt_v4.into(), to_b, 3 << 20)
        .join()
        .unwrap();
    assert_eq!(drain_a.join().unwrap(), 8 << 20);
    assert_eq!(drain_b.join().unwrap(), 3 << 20);

    let ((rx_bytes1, _), after) = quiet(&lab, &dp);
    let delta = received_delta(&first, &after);
    let (a_general, a_exempt, a) = delta[&UID_A];
    let (b_general, b_exempt, b) = delta[&UID_B];
    assert_eq!(a_exempt, 0, "uid A downloaded from a general address");
    assert_eq!(b_general, 0, "uid B downloaded from an exempt address");
    // Payload plus headers; a segment that arrives between the handshake and accept() is
    // root's (the socket has no owner yet), hence a little below the payload at worst.
    let near = |got: u64, payload: u64| (payload * 99 / 100..payload * 105 / 100).contains(&got);
    assert!(near(a_general, 8 << 20), "uid A: {a}: {delta:?}");
    assert!(near(b_exempt, 3 << 20), "uid B: {b}: {delta:?}");
    // What the veth received, to the byte in most runs: every packet of both connections
    // reaches its socket (the senders close first: no TIME_WAIT on this side). About one run
    // in 30 differs by 100–200 bytes: two or three bare segments of a closing connection
    // that reach no socket (nobody's, so counted for no one). 11 MiB within 256 bytes.
    let rx = rx_bytes1 - rx_bytes0;
    let counted: u64 = delta.values().map(|(_, _, t)| t).sum();
    assert!(
        counted.abs_diff(rx) < 256,
        "counted {counted} received bytes, the veth received {rx}"
    );
    if counted != rx {
        eprintln!("counted {counted} received bytes, the veth received {rx}");
    }
}

const ALICE: u32 = 4211;
/// Long enough that no test crosses a period's end unless it means to.
const CONFIG: &str = "period = \"600s\"\ninterval = \"1s\"\n";

fn alice(extra: &str) -> String {
    format!("[[slice]]\nname = \"alice\"\nxid = {ALICE}\n{extra}")
}

/// Two intervals: what was received is synced.
fn settle() {
    std::thread::sleep(Duration::from_millis(2500));
}

/// `bytes` downloaded by `uid` over TCP from the lab's namespace (the peer sends, closes
/// first).
fn download(lab: &Lab, uid: u32, bytes: u64) {
    let host = IpAddr::V4(lab.host_v4());
    let listener = tcp_listener_as(uid, SocketAddr::new(host, 0));
    let to = listener.local_addr().unwrap();
    let drain = tcp_drain(uid, listener);
    lab.send_tcp_from_ns(lab.general_v4.into(), to, bytes)
        .join()
        .unwrap();
    assert_eq!(drain.join().unwrap(), bytes);
}

fn received(d: &Daemon, name: &str) -> u64 {
    let s = d.slice(name).unwrap();
    u(&s, "received_bytes") + u(&s, "received_exempt_bytes")
}

#[test]
fn received_bytes_survive_kill_9_and_a_reboot_and_teardown_removes_the_ingress_programs() {
    let lab = Lab::new();
    let mut d = Daemon::start(&lab, CONFIG, &alice(""));
    download(&lab, ALICE, 4 << 20);
    settle();
    let before = d.slice("alice").unwrap();
    let got = received(&d, "alice");
    assert!((4 << 20..(4 << 20) * 105 / 100).contains(&got), "{before}");
    assert_eq!(before["count"], "egress");
    assert!(
        u(&before, "bytes") < 1 << 20,
        "egress: only the ACKs it sent: {before}"
    );

    // kill -9: the pinned counters go on, nothing lost or doubled.
    d.stop(libc::SIGKILL);
    d.restart();
    settle();
    assert_eq!(received(&d, "alice"), got, "nothing received in between");
    download(&lab, ALICE, 1 << 20);
    settle();
    let after_kill = received(&d, "alice");
    assert!(
        (got + (1 << 20)..got + (1 << 20) * 105 / 100).contains(&after_kill),
        "{after_kill} after {got}"
    );

    // A reboot: the kernel's state is lost; the state file keeps what was received.
    let pins = std::path::Path::new(bwmon_agent::paths::PIN_ROOT).join(&lab.host_if);
    let link = pins.join("link_ingress_cgroup");
    let prog_id = aya::programs::links::PinnedLink::from_pin(&link)
        .map(aya::programs::links::FdLink::from)
        .unwrap()
        .info()
        .unwrap()
        .program_id();
    d.stop(libc::SIGKILL);
    d.teardown();
    assert!(!pins.exists(), "teardown removed the pins");
    // The cgroup program is gone with its link (give the kernel's RCU a moment to free it),
    // and nothing of ours is on the interface's ingress.
    let gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .any(|p| p.id() == prog_id)
    });
    assert!(
        gone,
        "the ingress counter {prog_id} is still loaded after teardown"
    );
    let tc = lab.tc(&["filter", "show", "dev", &lab.host_if, "ingress"]);
    assert!(
        String::from_utf8_lossy(&tc.stdout).trim().is_empty(),
        "clsact ingress filters left: {}",
        String::from_utf8_lossy(&tc.stdout)
    );
    let tcx = aya::programs::SchedClassifier::query_tcx(
        lab.host_if.as_str(),
        aya::programs::TcAttachType::Ingress,
    )
    .map(|(_, progs)| progs.len())
    .unwrap_or(0);
    assert_eq!(tcx, 0, "TCX ingress programs left");
    d.restart();
    settle();
    assert_eq!(
        received(&d, "alice"),
        after_kill,
        "the reboot lost nothing synced"
    );
    download(&lab, ALICE, 1 << 20);
    settle();
    let later = received(&d, "alice");
    assert!(
        (after_kill + (1 << 20)..after_kill + (1 << 20) * 105 / 100).contains(&later),
        "{later} after {after_kill}"
    );
}

const BOB: u32 = 4212;

fn bob() -> String {
    format!("[[slice]]\nname = \"bob\"\nxid = {BOB}\n")
}

#[test]
fn under_count_both_a_slice_that_only_downloads_is_capped_and_ends_its_period_within_its_budget() {
    let lab = Lab::new();
    // 4000 KiB a 30 s period, capped from 2000 KiB on; downloads arrive at 4 mbit/s (500 KB/s),
    // so the threshold is passed about 4 s in and the policer spreads the rest.
    let config = "period = \"30s\"\ninterval = \"1s\"\ncount = \"both\"\n";
    let slices = alice("net_max_kbyte = 4000\nnet_thresh_kbyte = 2000\n");
    let d = Daemon::start(&lab, config, &slices);
    settle();
    let start = u(&d.slice("alice").unwrap(), "period_start");
    let server = lab.iperf3_server(5731);
    let secs = 36;
    let rate =
        bwmon_tests::iperf3_download_as(ALICE, lab.general_v4.into(), 5731, secs, &["-b", "4M"]);
    drop(server);
    eprintln!("alice downloaded at {rate:.0} bit/s on average over {secs} s");
    settle();
    let out = d.command(&["history", "alice", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_document("history", &doc);
    let status = d.status();
    assert_document("status", &status);
    let show = d.command(&["slice", "show", "alice", "--json"]);
    let show: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_document("slice", &show);
    // (A new period may have begun since the download: what it received so far may be 0.)
    assert!(show["classes"][0]["received_bytes"].is_u64(), "{show}");
    let periods = doc["slices"][0]["periods"].as_array().unwrap();
    let first = periods
        .iter()
        .find(|p| u(p, "start") == start)
        .unwrap_or_else(|| panic!("no finished period from {start}: {doc}"));
    let budget = 4000 * 1024;
    let used = u(first, "bytes");
    eprintln!(
        "period {start}: charged {used} of {budget} ({:.1} %), received {}",
        used as f64 * 100.0 / budget as f64,
        u(first, "received_bytes")
    );
    // Downloads are what it was charged, but for the ACKs it sent.
    assert!(u(first, "received_bytes") >= used * 9 / 10, "{first}");
    assert!(!first["capped_at"].is_null(), "capped: {first}");
    assert!(
        (budget * 95 / 100..=budget).contains(&used),
        "ended at {used} of {budget}: {first}"
    );
}

/// alice's download held at `limit` (iperf3 -R, measured at the receiver).
fn held_at(lab: &Lab, d: &Daemon, limit: &str, bps: f64, port: u16) -> f64 {
    let out = d.command(&["slice", "limit", "alice", limit]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    settle();
    let server = lab.iperf3_server(port);
    // Steady state: the first 2 s (the bucket's initial burst) are left out.
    let rate = bwmon_tests::iperf3_download_as(ALICE, lab.general_v4.into(), port, 8, &["-O", "2"]);
    drop(server);
    eprintln!("alice limited to {limit}: downloaded at {rate:.0} bit/s");
    // In an emulated guest (`BWMON_SLOW`) a receiver starved of CPU may not reach the ceiling:
    // there only "never above it" is checked (as the share and cgroup tests do).
    let low = if std::env::var_os("BWMON_SLOW").is_some() {
        0.0
    } else {
        bps * 0.75
    };
    assert!(
        (low..=bps * 1.25).contains(&rate),
        "alice limited to {limit} downloaded at {rate:.0} bit/s"
    );
    rate
}

#[test]
fn a_limited_slices_downloads_are_held_at_its_ceiling_and_a_neighbours_are_not() {
    let lab = Lab::new();
    // bob's download without bwmon, then beside a limited alice with bwmon.
    let bare = {
        let server = lab.iperf3_server(5741);
        let r = bwmon_tests::iperf3_download_as(BOB, lab.general_v4.into(), 5741, 4, &[]);
        drop(server);
        r
    };
    let mut d = Daemon::start(&lab, CONFIG, &format!("{}{}", alice(""), bob()));
    settle();
    held_at(&lab, &d, "10mbit", 10e6, 5742);
    held_at(&lab, &d, "1mbit", 1e6, 5743);
    // alice keeps downloading at her 1 mbit/s while bob downloads.
    let alice_server = lab.iperf3_server(5744);
    let general = lab.general_v4.into();
    let alice_dl =
        std::thread::spawn(move || bwmon_tests::iperf3_download_as(ALICE, general, 5744, 6, &[]));
    let server = lab.iperf3_server(5745);
    let with = bwmon_tests::iperf3_download_as(BOB, lab.general_v4.into(), 5745, 4, &[]);
    drop(server);
    let alice_rate = alice_dl.join().unwrap();
    drop(alice_server);
    let policed = d.slice("alice").unwrap();
    // bob without bwmon again, after it (the machine's load changes over a test: the bare
    // rate is the mean of the two readings around the one with bwmon).
    d.stop(libc::SIGTERM);
    d.teardown();
    let after = {
        let server = lab.iperf3_server(5746);
        let r = bwmon_tests::iperf3_download_as(BOB, lab.general_v4.into(), 5746, 4, &[]);
        drop(server);
        r
    };
    let bare = (bare + after) / 2.0;
    eprintln!(
        "bob downloaded at {bare:.0} bit/s without bwmon, {with:.0} with it beside alice at {alice_rate:.0} ({:.2})",
        with / bare
    );
    // Not policed: far above alice's 1 mbit/s ceiling, which holds while bob downloads. The
    // throughput ratio itself (target ≥ 0.90) is a benchmark row (`cargo xtask bench`,
    // bench_ingress): on a shared 2-core machine a multi-Gbit/s rate in a test swings by more
    // than that margin.
    assert!(
        with >= 20.0 * 1e6,
        "bob: {with:.0} with bwmon, {bare:.0} without"
    );
    assert_eq!(policed["limit_bps"], 1_000_000, "{policed}");
}

/// What the shipped unit gives `bwmon run`: its capabilities only (`CapabilityBoundingSet`,
/// `AmbientCapabilities` of `systemd/bwmon.service`), and the cgroup tree read-only
/// (`ProtectControlGroups=yes`), in a mount namespace of its own. The script checks that the
/// cgroup v2 mount is read-only before it starts bwmon (exit 97 otherwise).
const UNIT_SANDBOX: &str = r#"
for m in /sys/fs/cgroup /sys/fs/cgroup/unified; do
  mountpoint -q "$m" && mount -o remount,bind,ro "$m"
done
for m in /sys/fs/cgroup /sys/fs/cgroup/unified; do
  if [ "$(stat -f -c %T "$m" 2>/dev/null)" = cgroup2fs ]; then
    mkdir "$m/bwmon-write-probe" 2>/dev/null && { rmdir "$m/bwmon-write-probe"; exit 97; }
  fi
done
caps=-all,+bpf,+perfmon,+net_admin
exec setpriv --bounding-set=$caps --inh-caps=$caps --ambient-caps=$caps "$0" "$@"
"#;

#[test]
fn the_ingress_counter_attaches_with_the_units_capabilities_and_a_read_only_cgroup_tree() {
    let lab = Lab::new();
    let mut d = Daemon::prepare(&lab, CONFIG, &alice(""));
    d.wrapper = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        UNIT_SANDBOX,
    ]
    .map(String::from)
    .to_vec();
    d.restart();
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid().unwrap())).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    // CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39) and nothing else.
    assert_eq!(cap_eff, (1 << 12) | (1 << 38) | (1 << 39), "{status}");
    download(&lab, ALICE, 2 << 20);
    settle();
    let got = received(&d, "alice");
    assert!(
        (2 << 20..(2 << 20) * 105 / 100).contains(&got),
        "received {got}: {}",
        d.log()
    );
    // Without CAP_SYS_ADMIN the programs in place are still seen as in place: no sync
    // attaches them again.
    assert!(
        !d.log().contains("no longer reaches the interface"),
        "{}",
        d.log()
    );
    assert!(
        d.log()
            .contains("attached the ingress counter to the cgroup v2 root"),
        "{}",
        d.log()
    );
}

#[test]
fn a_source_prefix_slices_downloads_are_counted_by_destination_and_split_by_source() {
    const TENANT: u32 = 77;
    let lab = Lab::new();
    let mut dp = open(&lab, XidSource::Source);
    // The tenant's prefix is the host side's address: what it receives is sent there.
    let prefix = format!("{}/32", lab.host_v4()).parse().unwrap();
    dp.set_sources(&[(prefix, TENANT)]).unwrap();
    let sock = udp_socket_as(0, SocketAddr::new(IpAddr::V4(lab.host_v4()), 0));
    let to = sock.local_addr().unwrap();
    let before = dp.snapshot().unwrap();
    let general = lab.send_udp_from_ns(lab.general_v4.into(), to, 200, 900);
    let exempt = lab.send_udp_from_ns(lab.exempt_v4.into(), to, 30, 500);
    assert_eq!(udp_drain(&sock), 230);
    let after = dp.snapshot().unwrap();
    let t = after.received[&TENANT];
    let b = before.received.get(&TENANT).copied().unwrap_or_default();
    assert_eq!(
        (
            t.general.packets - b.general.packets,
            t.general.bytes - b.general.bytes
        ),
        (200, 200 * general)
    );
    assert_eq!(
        (
            t.exempt.packets - b.exempt.packets,
            t.exempt.bytes - b.exempt.bytes
        ),
        (30, 30 * exempt)
    );
    // Counted once: the cgroup counter (the socket's owner is root, xid 0) leaves them to
    // the TC one; root is charged only what matched no prefix (ARP, neighbour discovery).
    let root = |s: &Snapshot| {
        let c = s.received.get(&0).copied().unwrap_or_default();
        c.general.bytes + c.exempt.bytes
    };
    assert!(root(&after) - root(&before) < 200 * general, "{after:?}");
}
