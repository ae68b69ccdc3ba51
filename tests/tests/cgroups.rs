//! Tenants as cgroups, end to end: a real daemon, real cgroups under the v2 hierarchy
//! (processes moved into them through `cgroup.procs`), real traffic from a namespace lab.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bwmon_tests::{
    Daemon, Lab, TestCgroups, bwmon_bin_for_tenants, cmd, median, output_in, poll, rates,
    send_tcp_in, send_udp_as, send_udp_in, sender_in, syscalls, tcp_wire_at_most, u,
};

const ALICE: u32 = 4901;
const CONFIG: &str = "period = \"600s\"\ninterval = \"1s\"\n";

/// In an emulated guest (`BWMON_SLOW`) a sender starved of CPU may not reach a ceiling: there
/// only "never above it" is checked (as the share tests do), here also "at it".
fn slow() -> bool {
    std::env::var_os("BWMON_SLOW").is_some()
}

/// Two intervals: what was sent is synced.
fn settle() {
    std::thread::sleep(Duration::from_millis(2500));
}

fn classes(slice: &serde_json::Value) -> Vec<String> {
    slice["classes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The slice `name` once it is in the status with `leaves` leaves.
fn with_leaves(d: &Daemon, name: &str, leaves: usize) -> serde_json::Value {
    let s = poll(
        10,
        || d.slice(name),
        |s| s.as_ref().is_some_and(|s| classes(s).len() == leaves),
    );
    s.unwrap_or_else(|| panic!("no slice {name} in {}", d.status()))
}

#[test]
fn a_process_in_a_tenant_cgroup_and_below_it_is_charged_to_the_slice_exactly() {
    let lab = Lab::new();
    let cg = TestCgroups::new();
    let ci = cg.make("ci");
    let step = cg.make("ci/step");
    let d = Daemon::start(
        &lab,
        &format!("{CONFIG}exempt_prefixes = [\"{}\"]\n", lab.exempt_net_v4),
        &format!(
            "[[slice]]\nname = \"alice\"\nxid = {ALICE}\n[[slice]]\nname = \"ci\"\ncgroup = \"{}\"\n",
            cg.path("ci")
        ),
    );
    let general = SocketAddr::new(lab.general_v4.into(), 9);
    let exempt = SocketAddr::new(lab.exempt_v4.into(), 9);
    // Its leaves come with its first traffic (general first: the classes list general first).
    send_udp_in(&ci, Some(ALICE), None, general, 1, 100);
    with_leaves(&d, "ci", 1);
    send_udp_in(&ci, Some(ALICE), None, exempt, 1, 100);
    let before = with_leaves(&d, "ci", 2);
    settle();
    let before = d.slice("ci").unwrap_or(before);
    assert_eq!(before["cgroup"], cg.path("ci"), "{before}");
    let leaves = classes(&before);
    let htb = |i: usize| lab.class_bytes(&leaves[i]);
    let (g0, e0) = (htb(0), htb(1));
    let alice0 = d.slice("alice").map(|s| u(&s, "bytes")).unwrap_or(0);

    // The tenant's processes (with alice's uid): in the cgroup and in its sub-cgroup.
    let w1 = send_udp_in(&ci, Some(ALICE), None, general, 200, 1000);
    let w2 = send_udp_in(&step, Some(ALICE), None, general, 100, 500);
    let we = send_udp_in(&step, Some(ALICE), None, exempt, 50, 700);
    let tcp = SocketAddr::new(lab.general_v4.into(), 5801);
    let sink = lab.tcp_sink(tcp, 1);
    send_tcp_in(&step, Some(ALICE), tcp, 4 << 20);
    assert_eq!(sink.join().unwrap(), 4 << 20);
    // The same uid outside the cgroup: alice's.
    let wa = send_udp_as(ALICE, general, 30, 400);
    settle();

    let after = d.slice("ci").unwrap();
    let added = u(&after, "bytes") - u(&before, "bytes");
    let added_exempt = u(&after, "exempt_bytes") - u(&before, "exempt_bytes");
    let (g1, e1) = (htb(0), htb(1));
    eprintln!(
        "ci: general {added} bytes (HTB sent {}), exempt {added_exempt} (HTB sent {})",
        g1 - g0,
        e1 - e0
    );
    assert_eq!(added, g1 - g0, "general: what its leaf sent");
    assert_eq!(added_exempt, e1 - e0, "exempt: what its leaf sent");
    assert_eq!(added_exempt, 50 * we, "exempt: every datagram, exactly");
    assert!(added >= 200 * w1 + 100 * w2 + (4 << 20), "{after}");
    assert!(
        added <= 200 * w1 + 100 * w2 + tcp_wire_at_most(4 << 20),
        "{after}"
    );
    let alice = d.slice("alice").unwrap();
    assert_eq!(
        u(&alice, "bytes") - alice0,
        30 * wa,
        "alice: her own datagrams only"
    );
}

#[test]
fn a_capped_cgroup_slice_is_held_at_its_ceiling() {
    let lab = Lab::new();
    let cg = TestCgroups::new();
    let ci = cg.make("ci");
    let step = cg.make("ci/step");
    let d = Daemon::start(
        &lab,
        &format!("{CONFIG}node_cap = \"100mbit\"\n"),
        &format!(
            "[[slice]]\nname = \"ci\"\ncgroup = \"{}\"\nnet_max_rate = \"8mbit\"\n",
            cg.path("ci")
        ),
    );
    // A limit below the node cap: its leaf is made before it sends.
    let s = with_leaves(&d, "ci", 1);
    assert_eq!(u(&s, "ceil_bps"), 8_000_000);
    let dst = SocketAddr::new(lab.general_v4.into(), 5811);
    let meter = lab.meter(dst, 2);
    let _a = sender_in(&ci, dst);
    let _b = sender_in(&step, dst);
    std::thread::sleep(Duration::from_secs(2));
    let samples: Vec<f64> = (0..4)
        .map(|_| rates(&[&meter], Duration::from_secs(1))[0])
        .collect();
    let rate = median(&samples);
    eprintln!("ci held at {:.2} Mbit/s received (ceiling 8)", rate / 1e6);
    let low = if slow() { 0.0 } else { 7.0e6 };
    assert!(
        (low..=8.4e6).contains(&rate),
        "received {rate} bit/s, samples {samples:?}"
    );
}

#[test]
fn a_cgroup_slice_over_its_threshold_is_capped_and_held_at_the_lowered_ceiling() {
    let lab = Lab::new();
    let cg = TestCgroups::new();
    let step = cg.make("ci/step");
    // Over 1 MB the ceiling becomes what is left of 40 MB over what is left of the minute: a
    // few Mbit/s, measurable at the receiver.
    let d = Daemon::start(
        &lab,
        "period = \"60s\"\ninterval = \"1s\"\nnode_cap = \"100mbit\"\n",
        &format!(
            "[[slice]]\nname = \"ci\"\ncgroup = \"{}\"\nnet_max_kbyte = 40000\nnet_thresh_kbyte = 1000\n",
            cg.path("ci")
        ),
    );
    let dst = SocketAddr::new(lab.general_v4.into(), 5831);
    let meter = lab.meter(dst, 1);
    let _sender = sender_in(&step, dst);
    let capped = poll(10, || d.slice("ci").unwrap(), |s| s["capped"] == true);
    assert_eq!(capped["capped"], true, "{capped}");
    std::thread::sleep(Duration::from_secs(2));
    let samples: Vec<f64> = (0..4)
        .map(|_| rates(&[&meter], Duration::from_secs(1))[0])
        .collect();
    let rate = median(&samples);
    let ceil = u(&d.slice("ci").unwrap(), "ceil_bps") as f64;
    eprintln!(
        "ci capped: ceiling {:.2} Mbit/s, received {:.2} Mbit/s",
        ceil / 1e6,
        rate / 1e6
    );
    assert!(ceil < 100e6 / 4.0, "lowered: {ceil}");
    let low = if slow() { 0.0 } else { 0.8 * ceil };
    assert!(
        (low..=1.05 * ceil).contains(&rate),
        "received {rate} bit/s under a ceiling of {ceil}, samples {samples:?}"
    );
}

#[test]
fn a_patterns_new_cgroup_is_a_slice_within_an_interval_and_a_recreated_one_continues() {
    let lab = Lab::new();
    let cg = TestCgroups::new();
    let d = Daemon::start(
        &lab,
        CONFIG,
        &format!(
            "[[cgroups]]\npattern = \"{}\"\nnet_max_kbyte = 500000\n",
            cg.path("job-*")
        ),
    );
    assert!(d.slice("job-1").is_none());
    let job = cg.make("job-1");
    let made = Instant::now();
    let s = poll(5, || d.slice("job-1"), Option::is_some)
        .unwrap_or_else(|| panic!("no slice for job-1 in {}", d.status()));
    let took = made.elapsed();
    eprintln!("job-1 became a slice {took:?} after its cgroup was made");
    // One interval (1 s), the sync itself and the status command that sees it; an emulated
    // guest (BWMON_SLOW) takes longer over each.
    // (Guests starved by other guests on the host were seen at 2.6 to 4.9 s.)
    let bound = if slow() { 8000 } else { 2200 };
    assert!(
        took <= Duration::from_millis(bound),
        "{took:?}: more than an interval"
    );
    assert_eq!(s["cgroup"], cg.path("job-1"));
    assert_eq!(u(&s, "max_kbyte"), 500000, "the pattern's attributes");
    let xid = u(&s, "xid");
    assert!(classes(&s).is_empty(), "no leaf before it sends");

    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    let w = send_udp_in(&job, None, None, dst, 100, 1000);
    let s = with_leaves(&d, "job-1", 1);
    let s = poll(
        5,
        || d.slice("job-1").unwrap_or(s.clone()),
        |s| u(s, "bytes") >= 100 * w,
    );
    assert_eq!(u(&s, "bytes"), 100 * w);

    // Gone, then back under the same path with a new kernel id: the same slice, its usage
    // carried on.
    let old_id = cg.id("job-1");
    cg.remove("job-1");
    poll(5, || d.slice("job-1"), Option::is_none);
    let job = cg.make("job-1");
    assert_ne!(cg.id("job-1"), old_id, "a new cgroup");
    poll(5, || d.slice("job-1"), Option::is_some).expect("back");
    // Within one interval the map follows the new id.
    std::thread::sleep(Duration::from_millis(1200));
    send_udp_in(&job, None, None, dst, 50, 1000);
    let s = poll(
        5,
        || d.slice("job-1").unwrap(),
        |s| u(s, "bytes") >= 150 * w,
    );
    assert_eq!(u(&s, "xid"), xid);
    assert_eq!(
        u(&s, "bytes"),
        150 * w,
        "continued, nothing twice, nothing lost"
    );
}

#[test]
fn a_restart_and_a_reboot_keep_a_cgroup_slices_usage() {
    let lab = Lab::new();
    let cg = TestCgroups::new();
    let ci = cg.make("ci");
    let mut d = Daemon::start(
        &lab,
        CONFIG,
        &format!("[[slice]]\nname = \"ci\"\ncgroup = \"{}\"\n", cg.path("ci")),
    );
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    let w = send_udp_in(&ci, None, None, dst, 300, 1000);
    settle();
    let before = d.slice("ci").unwrap();
    assert_eq!(u(&before, "bytes"), 300 * w);

    // A restart.
    d.stop(libc::SIGTERM);
    d.restart();
    settle();
    assert_eq!(u(&d.slice("ci").unwrap(), "bytes"), 300 * w, "restart");

    // A reboot: the kernel's side is lost.
    d.stop(libc::SIGKILL);
    d.teardown();
    d.restart();
    settle();
    let after = d.slice("ci").unwrap();
    assert_eq!(after["period_start"], before["period_start"]);
    assert_eq!(u(&after, "bytes"), 300 * w, "reboot");
    let tcp = SocketAddr::new(lab.general_v4.into(), 5821);
    let sink = lab.tcp_sink(tcp, 1);
    send_tcp_in(&ci, None, tcp, 2 << 20);
    sink.join().unwrap();
    settle();
    let later = d.slice("ci").unwrap();
    let added = u(&later, "bytes") - 300 * w;
    let htb = lab.class_bytes(&classes(&later)[0]);
    eprintln!("after the reboot: {added} bytes added, HTB sent {htb}");
    assert!(added >= 2 << 20);
    assert_eq!(added, htb, "charged what the new tree sent");
}

/// A network namespace ("container") routed through the root namespace to the lab: its
/// traffic reaches the lab's interface forwarded, without its socket.
struct Container {
    netns: String,
    host_end: String,
    forwarding: String,
}

impl Container {
    fn new(lab: &Lab) -> Container {
        let n = lab.lab_no;
        let c = Container {
            netns: format!("{}c", lab.netns),
            host_end: format!("{}c", lab.host_if),
            forwarding: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        };
        let peer = format!("{}d", lab.host_if);
        cmd("ip", &["netns", "add", &c.netns]);
        cmd(
            "ip",
            &[
                "link",
                "add",
                &c.host_end,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ],
        );
        cmd("ip", &["link", "set", &peer, "netns", &c.netns]);
        cmd(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.214.{n}.1/24"),
                "dev",
                &c.host_end,
            ],
        );
        cmd("ip", &["link", "set", &c.host_end, "up"]);
        let ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", c.netns.as_str()];
            all.extend_from_slice(args);
            cmd("ip", &all);
        };
        ns(&[
            "ip",
            "addr",
            "add",
            &format!("10.214.{n}.2/24"),
            "dev",
            &peer,
        ]);
        ns(&["ip", "link", "set", &peer, "up"]);
        ns(&["ip", "link", "set", "lo", "up"]);
        ns(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.214.{n}.1"),
        ]);
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
        c
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", self.forwarding.trim());
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_end])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

#[test]
fn traffic_forwarded_from_a_container_netns_is_not_charged_to_its_cgroup() {
    let lab = Lab::new();
    let cg = TestCgroups::new();
    let ci = cg.make("ci");
    let container = Container::new(&lab);
    let d = Daemon::start(
        &lab,
        CONFIG,
        &format!("[[slice]]\nname = \"ci\"\ncgroup = \"{}\"\n", cg.path("ci")),
    );
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    // A local process of the tenant: its own.
    let w = send_udp_in(&ci, None, None, dst, 20, 600);
    settle();
    let before = d.status();
    let row = |doc: &serde_json::Value, name: &str| {
        doc["slices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| u(s, "bytes"))
            .unwrap_or(0)
    };
    assert_eq!(row(&before, "ci"), 20 * w);
    // The same cgroup's process inside the container's namespace: its packets are forwarded.
    let wf = send_udp_in(&ci, None, Some(&container.netns), dst, 100, 800);
    settle();
    let after = d.status();
    eprintln!(
        "forwarded: ci {} → {}, default {} → {}",
        row(&before, "ci"),
        row(&after, "ci"),
        row(&before, "default"),
        row(&after, "default")
    );
    assert_eq!(
        row(&after, "ci"),
        20 * w,
        "not charged to the cgroup's slice"
    );
    // Counted all the same, by xid_source (no socket: the overflow uid, a slice of no one).
    assert!(row(&after, "default") - row(&before, "default") >= 100 * wf);
}

#[test]
fn a_tenant_in_a_cgroup_is_answered_with_its_cgroups_slice() {
    let lab = Lab::new();
    let cg = TestCgroups::new();
    let ci = cg.make("ci");
    let step = cg.make("ci/step");
    let d = Daemon::start(
        &lab,
        CONFIG,
        &format!(
            "[[slice]]\nname = \"alice\"\nxid = {ALICE}\n[[slice]]\nname = \"ci\"\ncgroup = \"{}\"\n",
            cg.path("ci")
        ),
    );
    let config = d.config();
    let status = |dir: &std::path::Path| {
        let out = output_in(
            dir,
            ALICE,
            &bwmon_bin_for_tenants(),
            &["status", "--json", "--config", config.to_str().unwrap()],
        );
        let doc: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(doc["slices"].as_array().unwrap().len(), 1, "{doc}");
        doc["slices"][0].clone()
    };
    // alice's uid, in the tenant's cgroup and below it: the cgroup's slice.
    for dir in [&ci, &step] {
        let s = status(dir);
        assert_eq!(s["name"], "ci", "{s}");
        assert_eq!(s["cgroup"], cg.path("ci"));
    }
    // The same uid outside it: her own.
    let outside = cg.make("other");
    assert_eq!(status(&outside)["name"], "alice");

    // Root's views say the cgroup too, in documents their schemas take.
    let all = d.status();
    bwmon_tests::schema::assert_document("status", &all);
    let shown = d.command(&["slice", "show", "ci", "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    bwmon_tests::schema::assert_document("slice", &shown);
    assert_eq!(shown["cgroup"], cg.path("ci"));
    let text = String::from_utf8(d.command(&["status"]).stdout).unwrap();
    assert!(
        text.contains(&format!("cgroup {}", cg.path("ci"))),
        "{text}"
    );
}

#[test]
fn check_says_where_the_hierarchy_is_and_warns_of_cgroups_that_match_nothing() {
    let lab = Lab::new();
    let cg = TestCgroups::new();
    cg.make("ci");
    cg.make("job-1");
    let d = Daemon::prepare(
        &lab,
        CONFIG,
        &format!(
            "[[slice]]\nname = \"ci\"\ncgroup = \"{}\"\n[[slice]]\nname = \"gone\"\ncgroup = \"{}\"\n[[cgroups]]\npattern = \"{}\"\n[[cgroups]]\npattern = \"{}\"\n",
            cg.path("ci"),
            cg.path("gone"),
            cg.path("job-*"),
            cg.path("none-*"),
        ),
    );
    let out = d.command(&["check"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "warnings only");
    let root = bwmon_tests::cgroup2_root();
    assert!(
        stdout.contains(&format!("cgroup v2 hierarchy at {}", root.display())),
        "{stdout}"
    );
    assert!(stdout.contains(&format!(
        "pattern {}: 1 cgroups match now",
        cg.path("job-*")
    )));
    assert!(stderr.contains(&format!(
        "slice 'gone': cgroup {} does not exist now",
        cg.path("gone")
    )));
    assert!(stderr.contains(&format!(
        "pattern {} matches no cgroup now",
        cg.path("none-*")
    )));
    assert!(!stderr.contains("slice 'ci'"), "{stderr}");
}

/// The setpriv arguments of the shipped unit's credentials: root with only the unit's
/// capabilities (`CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN`,
/// `NoNewPrivileges=yes`), and group `gid` instead of root's when given.
fn unit_creds(gid: Option<u32>) -> Vec<String> {
    let mut args = vec![
        "--bounding-set=-all,+bpf,+perfmon,+net_admin".to_owned(),
        "--inh-caps=-all".to_owned(),
        "--no-new-privs".to_owned(),
    ];
    if let Some(gid) = gid {
        args.extend([format!("--regid={gid}"), "--clear-groups".to_owned()]);
    }
    args
}

/// What the shipped unit's sandbox does that cgroup slices meet, for a daemon started under
/// it without systemd: its own mount namespace where `/proc` hides other users' processes
/// (`ProtectProc=invisible`) and the v2 hierarchy is read-only (`ProtectControlGroups=yes`),
/// with the unit's credentials ([`unit_creds`]), its system calls written to `syscalls`.
/// The script is fixed text: the hierarchy's path and every argument come as `$1` and `$@`.
fn sandboxed(d: &mut Daemon, gid: Option<u32>, syscalls: &std::path::Path) {
    const SCRIPT: &str = "root=$1; shift; mount -t proc -o hidepid=invisible proc /proc && mount --bind \"$root\" \"$root\" && mount -o remount,bind,ro \"$root\" && exec setpriv \"$@\"";
    let root = bwmon_tests::cgroup2_root().display().to_string();
    d.wrapper = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        SCRIPT,
        "sh",
    ]
    .map(String::from)
    .into_iter()
    .chain([root])
    .chain(unit_creds(gid))
    .chain(syscalls::strace_args(syscalls))
    .collect();
}

/// Whether a process with the unit's credentials (group `gid`) in the daemon's mount
/// namespace can read alice's `/proc/PID/cgroup`.
fn proc_shows_alice(d: &Daemon, gid: Option<u32>) -> bool {
    let mut sleeper =
        std::os::unix::process::CommandExt::uid(&mut std::process::Command::new("sleep"), ALICE)
            .arg("30")
            .spawn()
            .unwrap();
    let pid = d.pid().unwrap();
    // The daemon's root too (an emulated guest runs everything in a chroot); the probe must
    // read its own cgroup file, so that a failure to run is not taken for "hidden".
    let probe = format!(
        "cat /proc/self/cgroup >/dev/null && if cat /proc/{}/cgroup >/dev/null 2>&1; then echo shown; else echo hidden; fi",
        sleeper.id()
    );
    let read = std::process::Command::new("nsenter")
        .args([
            format!("--mount=/proc/{pid}/ns/mnt"),
            format!("--root=/proc/{pid}/root"),
            "setpriv".to_owned(),
        ])
        .args(unit_creds(gid))
        .args(["--", "sh", "-c", &probe])
        .output()
        .unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    match String::from_utf8_lossy(&read.stdout).trim() {
        "shown" => true,
        "hidden" => false,
        other => panic!(
            "the probe did not run: {other:?} {}",
            String::from_utf8_lossy(&read.stderr)
        ),
    }
}

#[test]
fn under_the_units_sandbox_cgroup_slices_are_charged_and_tenants_found() {
    let lab = Lab::new();
    let cg = TestCgroups::new();
    let step = cg.make("ci/step");
    let mut d = Daemon::prepare(
        &lab,
        CONFIG,
        &format!(
            "[[slice]]\nname = \"alice\"\nxid = {ALICE}\n[[slice]]\nname = \"ci\"\ncgroup = \"{}\"\n[[cgroups]]\npattern = \"{}\"\n",
            cg.path("ci"),
            cg.path("job-*")
        ),
    );
    // Stricter than the unit: a group that is not root's, so that /proc really hides alice's
    // processes (hidepid exempts its gid= group, root's by default: the unit's root-group
    // daemon reads them; asserted below) and the tenant is found through cgroup.procs.
    const NOGROUP: u32 = 65534;
    let syscalls_log = d.dir.join("syscalls");
    sandboxed(&mut d, Some(NOGROUP), &syscalls_log);
    d.restart();
    assert!(
        !proc_shows_alice(&d, Some(NOGROUP)),
        "hidden from a daemon outside root's group"
    );
    assert!(
        proc_shows_alice(&d, None),
        "the unit's root-group daemon reads it"
    );

    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    let w = send_udp_in(&step, Some(ALICE), None, dst, 100, 1000);
    cg.make("job-7");
    settle();
    assert_eq!(u(&d.slice("ci").unwrap(), "bytes"), 100 * w);
    assert!(
        d.slice("job-7").is_some(),
        "a pattern's cgroup, read from the read-only hierarchy"
    );
    let config = d.config();
    let out = output_in(
        &step,
        ALICE,
        &bwmon_bin_for_tenants(),
        &["status", "--json", "--config", config.to_str().unwrap()],
    );
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc["slices"][0]["name"], "ci",
        "found through cgroup.procs: {doc}"
    );
    // Every system call it made, from its start (the programs' load and attachment, the
    // hierarchy's scan) to its stop, is one the unit's SystemCallFilter= allows
    // (under the unit, any other fails with EPERM).
    assert!(d.stop(libc::SIGTERM).success());
    let made = syscalls::traced(&syscalls_log);
    assert!(
        made.contains("bpf") && made.contains("getdents64"),
        "{made:?}"
    );
    let allowed = syscalls::unit_allows(&syscalls::unit_file());
    let refused: Vec<&String> = made.difference(&allowed).collect();
    println!(
        "the daemon made {} distinct system calls: {made:?}",
        made.len()
    );
    assert!(
        refused.is_empty(),
        "outside the unit's SystemCallFilter=: {refused:?}"
    );
}

#[test]
fn a_cgroup_slices_history_says_its_cgroup() {
    let lab = Lab::new();
    let cg = TestCgroups::new();
    let ci = cg.make("ci");
    let d = Daemon::start(
        &lab,
        "period = \"5s\"\ninterval = \"1s\"\n",
        &format!("[[slice]]\nname = \"ci\"\ncgroup = \"{}\"\n", cg.path("ci")),
    );
    let w = send_udp_in(
        &ci,
        None,
        None,
        SocketAddr::new(lab.general_v4.into(), 9),
        10,
        500,
    );
    let history = || {
        let out = d.command(&["history", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // The datagrams' period may be the first or (a slow start) the next: the finished periods'
    // bytes add up to them.
    let used = |doc: &serde_json::Value| -> u64 {
        (doc["slices"].as_array().into_iter().flatten())
            .filter(|s| s["name"] == "ci")
            .flat_map(|s| s["periods"].as_array().into_iter().flatten())
            .map(|p| u(p, "bytes"))
            .sum()
    };
    let doc = poll(if slow() { 90 } else { 20 }, history, |doc| {
        used(doc) >= 10 * w
    });
    bwmon_tests::schema::assert_document("history", &doc);
    let ci = doc["slices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ci")
        .unwrap_or_else(|| panic!("{doc}"));
    assert_eq!(ci["cgroup"], cg.path("ci"));
    assert_eq!(used(&doc), 10 * w);
    let text = String::from_utf8(d.command(&["history", "ci"]).stdout).unwrap();
    assert!(
        text.contains(&format!("cgroup {}", cg.path("ci"))),
        "{text}"
    );
}
