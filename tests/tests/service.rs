//! Safe to run as a service: one instance per interface, bounded servers no local user can
//! stall, a reload that reloads (and refuses what it cannot apply), bad slice entries skipped,
//! dry run mailing nobody, and systemd told when bwmon is ready.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use bwmon_tests::{
    Daemon, Lab, SmtpServer, free_port, http, raise_nofile, send_tcp_as, send_udp_as, u,
};

const ALICE: u32 = 4921;
const BOB: u32 = 4922;

fn alice() -> String {
    format!("[[slice]]\nname = \"alice\"\nxid = {ALICE}\n")
}

fn settle() {
    std::thread::sleep(Duration::from_millis(2500));
}

#[test]
fn a_second_daemon_on_the_interface_is_refused_and_changes_nothing() {
    let lab = Lab::new();
    let d = Daemon::start(&lab, "interval = \"1s\"\n", &alice());
    let socket = d.dir.join("bwmon.sock");
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&socket).unwrap());
    // Another config for the same interface, with its own socket and state.
    let other = d.dir.join("other.toml");
    std::fs::write(
        &other,
        d.config_text()
            .replace("socket = \"bwmon.sock\"", "socket = \"other.sock\"")
            .replace("state = \"state\"", "state = \"other-state\""),
    )
    .unwrap();
    let text = refused_run(&other);
    assert!(
        text.contains(&format!("bwmon already runs on {}", lab.host_if)),
        "{text}"
    );
    assert!(!d.dir.join("other.sock").exists(), "no socket made");
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&socket).unwrap()),
        inode,
        "the first one's socket untouched"
    );
    assert!(
        d.status()["now"].as_u64().unwrap() > 0,
        "the first still answers"
    );
}

/// `bwmon run` on `config` to its end (it is expected to be refused): its stderr.
fn refused_run(config: &std::path::Path) -> String {
    let out = std::process::Command::new(bwmon_tests::bwmon_bin())
        .args(["run", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(!out.status.success(), "it ran");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn two_daemons_on_two_interfaces_cannot_share_a_state_file_or_a_socket() {
    let (lab, other_lab) = (Lab::new(), Lab::new());
    let mut d = Daemon::start(&lab, "interval = \"1s\"\n", &alice());
    let pid = d.pid().unwrap();
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    send_udp_as(ALICE, dst, 20, 1000);
    settle();
    let used = u(&d.slice("alice").unwrap(), "bytes");
    assert!(used > 0);
    let state = d.dir.join("state");
    let socket = d.dir.join("bwmon.sock");
    let inode =
        |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let (state_inode, socket_inode) = (inode(&state), inode(&socket));
    // A daemon on another interface with the same default paths: refused, naming the first.
    let twin = Daemon::prepare(&other_lab, "interval = \"1s\"\n", &alice());
    let shared = |state: &std::path::Path, socket: &std::path::Path, tenant: &std::path::Path| {
        format!(
            "interface = \"{}\"\nslices = \"slices.toml\"\nstate = \"{}\"\nsocket = \"{}\"\ntenant_socket = \"{}\"\ninterval = \"1s\"\n",
            other_lab.host_if,
            state.display(),
            socket.display(),
            tenant.display()
        )
    };
    let tenant = d.dir.join("tenant.sock");
    twin.write_config(&shared(&state, &socket, &tenant));
    let text = refused_run(&twin.config());
    assert!(
        text.contains(&format!(
            "the state file {} is in use by another bwmon (pid {pid}, on {}",
            state.display(),
            lab.host_if
        )),
        "{text}"
    );
    // Its own state, the first one's sockets: refused too.
    twin.write_config(&shared(&twin.dir.join("state"), &socket, &tenant));
    let text = refused_run(&twin.config());
    assert!(text.contains("the control socket"), "{text}");
    twin.write_config(&shared(
        &twin.dir.join("state"),
        &twin.dir.join("s"),
        &tenant,
    ));
    let text = refused_run(&twin.config());
    assert!(text.contains("the tenant socket"), "{text}");
    assert!(!twin.dir.join("state").exists(), "nothing written");
    // The first daemon's files untouched; after a restart it charges what it charged, once.
    assert_eq!(
        (inode(&socket), inode(&state), u(&d.status(), "now") > 0),
        (socket_inode, state_inode, true)
    );
    d.stop(libc::SIGTERM);
    d.restart();
    settle();
    assert_eq!(u(&d.slice("alice").unwrap(), "bytes"), used, "charged once");
}

/// A daemon run inside a lab's network namespace (nsenter: the mounts stay the host's) on
/// interface `iface` there; stopped and torn down (its pins are not the lab's) when dropped.
struct InNetns {
    d: Daemon,
    netns: String,
}

impl InNetns {
    fn prepare(lab: &Lab, iface: &str) -> InNetns {
        let mut d = Daemon::prepare(lab, "interval = \"1s\"\n", &alice());
        let text = d.config_text().replace(
            &format!("interface = \"{}\"", lab.host_if),
            &format!("interface = \"{iface}\""),
        );
        d.write_config(&text);
        d.wrapper = vec!["nsenter".into(), format!("--net=/run/netns/{}", lab.netns)];
        InNetns {
            d,
            netns: lab.netns.clone(),
        }
    }

    /// `bwmon ARGS --config <its own>` in its namespace, to its end.
    fn command(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(bwmon_tests::bwmon_bin())
            .args(args)
            .arg("--config")
            .arg(self.d.config())
            .output()
            .unwrap()
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        if self.d.running() {
            self.d.stop(libc::SIGTERM);
        }
        let _ = self.command(&["teardown"]);
    }
}

#[test]
fn two_network_namespaces_with_an_interface_of_the_same_name_each_run_one() {
    let (a, b) = (Lab::new(), Lab::new());
    // The namespace end of each lab's veth, renamed alike.
    let same = "bwsame0";
    for lab in [&a, &b] {
        for args in [
            vec!["-n", &lab.netns, "link", "set", &lab.peer_if, "down"],
            vec!["-n", &lab.netns, "link", "set", &lab.peer_if, "name", same],
            vec!["-n", &lab.netns, "link", "set", same, "up"],
        ] {
            bwmon_tests::cmd("ip", &args);
        }
    }
    let mut da = InNetns::prepare(&a, same);
    let mut db = InNetns::prepare(&b, same);
    da.d.restart();
    db.d.restart();
    assert_eq!(da.d.status()["interface"], same);
    assert_eq!(db.d.status()["interface"], same);
    assert!(da.d.running() && db.d.running());
    for lab in [&a, &b] {
        let netns = format!("/run/netns/{}", lab.netns);
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&netns).unwrap());
        let pins =
            std::path::Path::new(bwmon_agent::paths::PIN_ROOT).join(format!("{same}:netns{ino}"));
        assert!(pins.is_dir(), "{netns}: {}", pins.display());
    }
    // A second daemon on the same interface of the same namespace is refused.
    let third = da.d.dir.join("third.toml");
    std::fs::write(
        &third,
        da.d.config_text()
            .replace("socket = \"bwmon.sock\"", "socket = \"third.sock\"")
            .replace("tenant_socket = \"tenant.sock\"", "tenant_socket = \"\"")
            .replace("state = \"state\"", "state = \"third-state\""),
    )
    .unwrap();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", a.netns))
        .arg(bwmon_tests::bwmon_bin())
        .args(["run", "--config"])
        .arg(&third)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains(&format!("bwmon already runs on {same}")),
        "{text}"
    );
    // Teardown in its namespace, once stopped, removes that namespace's pins alone.
    da.d.stop(libc::SIGTERM);
    let out = da.command(&["teardown"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        db.d.status()["now"].as_u64().unwrap() > 0,
        "the other runs on"
    );
    drop(third);
}

#[test]
fn teardown_beside_a_running_daemon_is_refused_and_removes_nothing() {
    let lab = Lab::new();
    let d = Daemon::start(&lab, "interval = \"1s\"\n", &alice());
    let out = d.command(&["teardown"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("stop the daemon first")
            && text.contains(&format!(
                "bwmon already runs on {} (pid {})",
                lab.host_if,
                d.pid().unwrap()
            )),
        "{text}"
    );
    let pins = std::path::Path::new(bwmon_agent::paths::PIN_ROOT).join(&lab.host_if);
    assert!(pins.is_dir(), "the datapath stays");
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    send_udp_as(ALICE, dst, 10, 1000);
    settle();
    assert!(u(&d.slice("alice").unwrap(), "bytes") > 0, "and counts");
}

#[test]
fn two_thousand_idle_metrics_connections_stall_neither_scrapes_status_nor_syncs() {
    raise_nofile(8192);
    let lab = Lab::new();
    let port = free_port();
    let mut d = Daemon::prepare(
        &lab,
        &format!("interval = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        &alice(),
    );
    d.wrapper = vec!["prlimit".into(), "--nofile=1024:1024".into()];
    d.restart();
    let scrape = || {
        let t = Instant::now();
        let out = http(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        t.elapsed()
    };
    let alone = scrape();
    // From the scraper's own address: a bound per address alone would shut the scraper out.
    let idle: Vec<TcpStream> = (0..2000)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    eprintln!("{} idle connections open", idle.len());
    assert!(idle.len() >= 1100, "more than the daemon's descriptors");
    // A scrape beside them takes under a second (Prometheus gives up after ten).
    let mut beside: Vec<Duration> = (0..3).map(|_| scrape()).collect();
    beside.sort();
    eprintln!(
        "scrape: {alone:?} alone, {:?} (median of 3) beside the idle ones",
        beside[1]
    );
    assert!(beside[1] <= Duration::from_secs(1), "{beside:?}");
    let first = u(&d.status(), "now");
    std::thread::sleep(Duration::from_secs(4));
    let s = d.status();
    assert!(
        u(&s, "now") >= first + 3,
        "syncs keep their interval: {first} -> {}",
        u(&s, "now")
    );
    // Traffic is still accounted (the sync's own sockets and netlink are not starved).
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    let wire = send_udp_as(ALICE, dst, 100, 1000);
    settle();
    assert_eq!(u(&d.slice("alice").unwrap(), "bytes"), 100 * wire);
    drop(idle);
    let log = d.log();
    let accept_lines = log
        .lines()
        .filter(|l| l.contains("accepting a connection"))
        .count();
    eprintln!(
        "{} log lines, {accept_lines} about accepting",
        log.lines().count()
    );
    assert!(accept_lines <= 5, "log bounded:\n{log}");
    assert!(log.lines().count() < 200, "log bounded:\n{log}");
}

#[test]
fn a_metrics_request_split_across_writes_is_answered() {
    let lab = Lab::new();
    let port = free_port();
    let _d = Daemon::start(
        &lab,
        &format!("interval = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\npublic = true\n"),
        &alice(),
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metr").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"ics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(out.contains("bwmon_slice_bytes_total"), "{out}");
}

/// The ceiling of class `handle` ("1:10") in bit/s, as tc shows it.
fn ceil_of(lab: &Lab, minor: u32) -> u64 {
    lab.tc_classes()[&(1, minor)].ceil
}

#[test]
fn sighup_applies_a_new_node_cap_keeps_counts_and_refuses_a_broken_config() {
    let lab = Lab::new();
    let d = Daemon::start(
        &lab,
        "interval = \"1s\"\nnode_cap = \"100mbit\"\n",
        &alice(),
    );
    let dst = SocketAddr::new(lab.general_v4.into(), 5931);
    let sink = lab.tcp_sink(dst, 1);
    send_tcp_as(ALICE, dst, 2 << 20);
    sink.join().unwrap();
    settle();
    let before = d.slice("alice").unwrap();
    assert_eq!(ceil_of(&lab, 0x10), 100_000_000);

    let good = d.config_text();
    d.write_config(&good.replace("100mbit", "40mbit"));
    d.signal(libc::SIGHUP);
    settle();
    assert_eq!(ceil_of(&lab, 0x10), 40_000_000, "the cap class changed");
    let after = d.slice("alice").unwrap();
    assert_eq!(after["period_start"], before["period_start"]);
    assert_eq!(u(&after, "bytes"), u(&before, "bytes"), "counts stay");
    assert_eq!(
        u(&after, "max_rate_bps"),
        40_000_000,
        "slices follow the cap"
    );

    // Broken: rejected whole with file:line: key, the running one stays.
    d.write_config(&good.replace("node_cap = \"100mbit\"", "node_cap = \"fast\""));
    d.signal(libc::SIGHUP);
    settle();
    let log = d.log();
    assert!(log.contains("configuration rejected on reload"), "{log}");
    assert!(
        log.contains("bwmon.toml:") && log.contains("node_cap"),
        "{log}"
    );
    assert_eq!(ceil_of(&lab, 0x10), 40_000_000, "old configuration kept");
    // (`bwmon status --config` reads the file for the socket's path: a good one again.)
    d.write_config(&good.replace("100mbit", "40mbit"));
    assert!(u(&d.status()["errors"], "config") >= 1);

    // A key that needs a restart: refused, said so.
    d.write_config(&good.replace(&lab.host_if, "other0"));
    d.signal(libc::SIGHUP);
    settle();
    assert!(
        d.log().contains("interface changed; that needs a restart"),
        "{}",
        d.log()
    );
    assert!(d.slice("alice").is_some(), "still running");
}

#[test]
fn a_slices_file_with_one_bad_entry_applies_the_others_and_reports_it() {
    let lab = Lab::new();
    let slices = format!(
        "[[slice]]\nname = \"alice\"\nxid = {ALICE}\n[[slice]]\nname = \"broken\"\nxid = \"x\"\n[[slice]]\nname = \"bob\"\nxid = {BOB}\n"
    );
    let d = Daemon::start(&lab, "interval = \"1s\"\n", &slices);
    let s = d.status();
    let names: Vec<&str> = s["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["root", "default", "alice", "bob"]);
    let warnings = s["warnings"].to_string();
    assert!(warnings.contains("slices.toml:6: slice[1].xid"), "{s}");
    assert!(u(&s["errors"], "slices") >= 1);
    assert!(d.log().contains("that slice is skipped"), "{}", d.log());
    // `bwmon check` says so in its exit code.
    let out = d.command(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 slices, 1 problems"));
}

#[test]
fn dry_run_mails_nobody() {
    let lab = Lab::new();
    let mut smtp = SmtpServer::new(free_port());
    smtp.start();
    let d = Daemon::start(
        &lab,
        &format!(
            "interval = \"1s\"\ndry_run = true\n[defaults]\nnet_max_kbyte = 100\n[mail]\ntransport = \"smtp\"\nsmtp = \"127.0.0.1:{}\"\n",
            smtp.port
        ),
        &alice(),
    );
    send_udp_as(ALICE, SocketAddr::new(lab.general_v4.into(), 9), 200, 1200);
    std::thread::sleep(Duration::from_secs(4));
    let a = d.slice("alice").unwrap();
    assert_eq!(a["capped"], true, "over its threshold: {a}");
    assert!(d.log().contains("would notify"), "{}", d.log());
    assert!(smtp.messages().is_empty(), "{:?}", smtp.messages());
}

#[test]
fn systemd_hears_ready_status_and_stopping() {
    let lab = Lab::new();
    let mut d = Daemon::prepare(&lab, "interval = \"1s\"\n", &alice());
    let path = d.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    d.env
        .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    let started = Instant::now();
    d.restart();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("READY=1") && started.elapsed() < Duration::from_secs(20) {
        let n = sock.recv(&mut buf).unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("READY=1"), "{seen}");
    assert!(seen.contains("STATUS=3 slices, 0 capped"), "{seen}");
    // Ready comes with the first sync: status serves the slices by then.
    assert!(d.slice("alice").is_some());
    d.signal(libc::SIGTERM);
    let mut tail = String::new();
    while !tail.contains("STOPPING=1") {
        let n = sock.recv(&mut buf).expect("STOPPING=1 before the deadline");
        tail.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}
