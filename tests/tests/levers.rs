//! The operator's levers and the tenant's view, on a real daemon in a namespace lab: a grant
//! lifts a capped slice at once, a reset starts its period, a limit holds its rate (measured
//! at the receiver) until cleared, all of it survives a restart; a user sees only their own
//! slice and pulls no lever; garbage on either socket gets an error reply.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    os::unix::net::UnixStream,
    process::{Command, Output},
    time::Duration,
};

use bwmon_agent::serve::control::{Reply, ReplyBody};
use bwmon_tests::{
    Daemon, Lab, bwmon_bin, bwmon_bin_for_tenants, iperf3_as, schema::assert_document, send_tcp_as,
    u,
};

const ALICE: u32 = 4731;
const BOB: u32 = 4732;
const NOBODY: u32 = 4733;

fn slices() -> String {
    // Budgets typed as sizes: 1 MiB for alice.
    format!(
        "[[slice]]\nname = \"alice\"\nxid = {ALICE}\nnet_max_kbyte = \"1MiB\"\n\
         [[slice]]\nname = \"bob\"\nxid = {BOB}\n"
    )
}

/// `bwmon ARGS --config <the daemon's>`, as `uid` when given.
fn bwmon_as(d: &Daemon, uid: Option<u32>, args: &[&str]) -> Output {
    let mut c = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                &uid.to_string(),
                "--regid",
                &uid.to_string(),
                "--clear-groups",
            ])
            .arg(bwmon_bin_for_tenants());
            c
        }
        None => Command::new(bwmon_bin()),
    };
    c.args(args)
        .arg("--config")
        .arg(d.config())
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn show(d: &Daemon, slice: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&bwmon_as(d, None, &["slice", "show", slice, "--json"]))).unwrap()
}

/// The ceiling of `slice`'s general leaf as the kernel has it.
fn leaf_ceil(lab: &Lab, d: &Daemon) -> u64 {
    let s = d.slice("alice").unwrap();
    let handle = s["classes"][0]
        .as_str()
        .expect("alice has a leaf")
        .to_owned();
    let (major, minor) = handle.split_once(':').unwrap();
    let key = (
        u32::from_str_radix(major, 16).unwrap(),
        u32::from_str_radix(minor, 16).unwrap(),
    );
    lab.tc_classes()[&key].ceil
}

#[test]
fn grant_reset_and_limit_apply_at_once_and_survive_a_restart() {
    let lab = Lab::new();
    let mut d = Daemon::start(&lab, "interval = \"1h\"\nnode_cap = \"1gbit\"\n", &slices());
    let dst = SocketAddr::new(IpAddr::V4(lab.general_v4), 9);
    let sink = lab.tcp_sink(dst, 1);
    send_tcp_as(ALICE, dst, 2 << 20);
    sink.join().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    d.sync_now();
    let alice = d.slice("alice").unwrap();
    assert_eq!(u(&alice, "max_kbyte"), 1024, "\"1MiB\" in the slices file");
    assert!(alice["capped"].as_bool().unwrap(), "{alice}");
    assert!(leaf_ceil(&lab, &d) < 1_000_000, "capped in the kernel");

    // A grant lifts the cap at once: the reply comes after the sync that applied it.
    let out = ok(&bwmon_as(&d, None, &["slice", "grant", "alice", "10MiB"]));
    assert!(
        out.contains(
            "alice: grant 10.0 MiB (general): general budget 1.0 MiB → general budget 11.0 MiB"
        ),
        "{out}"
    );
    assert_eq!(
        leaf_ceil(&lab, &d),
        1_000_000_000,
        "the kernel's ceiling is back"
    );
    let alice = d.slice("alice").unwrap();
    assert_eq!(u(&alice, "max_kbyte"), 11 * 1024);
    assert!(!alice["capped"].as_bool().unwrap());
    let log = d.log();
    assert!(
        log.contains("operator: lever pulled by_uid=0 slice=\"alice\""),
        "an audit line: {log}"
    );
    // The new total counts: past its threshold (80 % of 11 MiB) the cap comes back.
    let sink = lab.tcp_sink(dst, 1);
    send_tcp_as(ALICE, dst, 9 << 20);
    sink.join().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    d.sync_now();
    let alice = d.slice("alice").unwrap();
    assert!(alice["capped"].as_bool().unwrap(), "{alice}");

    // A reset starts the period now.
    let before = d.slice("alice").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    ok(&bwmon_as(&d, None, &["slice", "reset", "alice"]));
    let after = d.slice("alice").unwrap();
    assert!(u(&after, "period_start") > u(&before, "period_start"));
    assert_eq!(u(&after, "bytes"), 0);
    assert!(!after["capped"].as_bool().unwrap());
    assert_eq!(leaf_ceil(&lab, &d), 1_000_000_000);

    // A limit holds the rate, measured at the receiver.
    ok(&bwmon_as(&d, None, &["slice", "grant", "alice", "5GiB"]));
    let out = ok(&bwmon_as(&d, None, &["slice", "limit", "alice", "2mbit"]));
    assert!(
        out.contains("general no limit → general limit 2mbit"),
        "{out}"
    );
    assert_eq!(leaf_ceil(&lab, &d), 2_000_000);
    let port = 5300 + lab.lab_no as u16;
    let server = lab.iperf3_server(port);
    let rate = iperf3_as(ALICE, IpAddr::V4(lab.general_v4), port, 8);
    drop(server);
    eprintln!("alice limited to 2 mbit/s: the receiver got {rate:.0} bit/s");
    assert!(
        (1_800_000.0..=2_200_000.0).contains(&rate),
        "{rate} bit/s is not within 10 % of 2 mbit/s"
    );

    // Everything survives a restart.
    d.stop(libc::SIGTERM);
    d.restart();
    let shown = show(&d, "alice");
    let general = &shown["classes"][0];
    assert_eq!(general["limit_bps"], 2_000_000, "{shown}");
    assert_eq!(general["granted_bytes"], 5u64 << 30, "{shown}");
    assert_eq!(leaf_ceil(&lab, &d), 2_000_000);
    let attrs = shown["attributes"].as_array().unwrap();
    let source = |key: &str| {
        attrs.iter().find(|a| a["key"] == key).unwrap()["source"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(source("net_max_kbyte"), "slices file");
    assert_eq!(source("net_max_rate"), "built-in");
    // Cleared: back to the policy's ceiling.
    let out = ok(&bwmon_as(&d, None, &["slice", "limit", "alice", "--clear"]));
    assert!(
        out.contains("general limit 2mbit → general no limit"),
        "{out}"
    );
    assert_eq!(leaf_ceil(&lab, &d), 1_000_000_000);
    let text = ok(&bwmon_as(&d, None, &["slice", "show", "alice"]));
    assert!(text.contains("granted 5.0 GiB this period"), "{text}");

    // Refused with a reason, nothing changed.
    for (args, why) in [
        (
            &["slice", "grant", "nobody", "1GiB"][..],
            "no slice 'nobody'",
        ),
        (&["slice", "grant", "alice", "0B"][..], "more than 0 bytes"),
        (
            &["slice", "grant", "alice", "-5GiB"][..],
            "invalid size '-5GiB'",
        ),
        (
            &["slice", "grant", "alice", "lots"][..],
            "invalid size 'lots'",
        ),
        (&["slice", "limit", "alice", "1bit"][..], "at least"),
        (&["slice", "reset", "4999"][..], "no slice with xid 4999"),
    ] {
        let err = refused(&bwmon_as(&d, None, args));
        assert!(err.contains(why), "{args:?}: {err}");
    }
    assert_eq!(show(&d, "alice")["classes"][0]["granted_bytes"], 5u64 << 30);
}

/// Sends `frame` raw to `socket` and reads the reply.
fn raw(socket: &std::path::Path, frame: &[u8]) -> ReplyBody {
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(frame).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    postcard::from_bytes::<Reply>(&body).unwrap().body
}

#[test]
fn a_user_sees_only_their_own_slice_and_pulls_no_lever() {
    let lab = Lab::new();
    let d = Daemon::start(&lab, "interval = \"1s\"\n", &slices());
    let dst = SocketAddr::new(IpAddr::V4(lab.general_v4), 9);
    let sink = lab.tcp_sink(dst, 1);
    send_tcp_as(BOB, dst, 1 << 20);
    sink.join().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let tenant = d.dir.join("tenant.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&tenant).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o666);
    // The daemon's directory is root's; users must reach the sockets in it.
    std::fs::set_permissions(&d.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    // The tenant's document is root's, with their slice alone (a script need not know who
    // ran it), valid under the same schema.
    let mine: serde_json::Value =
        serde_json::from_str(&ok(&bwmon_as(&d, Some(BOB), &["status", "--json"]))).unwrap();
    assert_document("status", &mine);
    let root = d.status();
    assert_document("status", &root);
    assert_eq!(mine["slices"].as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine["slices"][0]["name"], "bob");
    assert_eq!(mine["slices"][0]["xid"], BOB);
    assert!(u(&mine["slices"][0], "bytes") >= 1 << 20, "{mine}");
    assert!(
        mine["version"].is_string() && mine["now"].is_u64(),
        "{mine}"
    );
    assert!(!mine.to_string().contains("alice"), "{mine}");
    // A grant and a limit on bob are in his view, as JSON and as text.
    ok(&bwmon_as(&d, None, &["slice", "grant", "bob", "1GiB"]));
    ok(&bwmon_as(&d, None, &["slice", "limit", "bob", "5mbit"]));
    let mine: serde_json::Value =
        serde_json::from_str(&ok(&bwmon_as(&d, Some(BOB), &["status", "--json"]))).unwrap();
    assert_document("status", &mine);
    assert_eq!(mine["slices"][0]["granted_bytes"], 1u64 << 30, "{mine}");
    assert_eq!(mine["slices"][0]["limit_bps"], 5_000_000, "{mine}");
    assert_eq!(
        mine["slices"][0]["exempt_limit_bps"],
        serde_json::Value::Null
    );
    let text = ok(&bwmon_as(&d, Some(BOB), &["status"]));
    assert!(text.contains("granted 1.0 GiB this period"), "{text}");
    assert!(text.contains("limited to 5mbit by the operator"), "{text}");
    assert_document("slice", &show(&d, "bob"));
    let text = ok(&bwmon_as(&d, Some(ALICE), &["status"]));
    assert!(text.starts_with("slice alice (uid 4731)"), "{text}");
    assert!(!text.contains("bob"), "{text}");
    let err = refused(&bwmon_as(&d, Some(NOBODY), &["status"]));
    assert!(err.contains(&format!("no slice for uid {NOBODY}")), "{err}");
    // No lever for users: the control socket is root's.
    for args in [
        &["slice", "grant", "alice", "1GiB"][..],
        &["slice", "reset", "bob"][..],
    ] {
        let err = refused(&bwmon_as(&d, Some(ALICE), args));
        assert!(err.contains("control socket"), "{args:?}: {err}");
    }

    // Garbage and oversized frames on both sockets: an error reply, and the interval goes on.
    let before = u(&d.status(), "now");
    for socket in [d.dir.join("bwmon.sock"), tenant] {
        let mut junk = 7u32.to_le_bytes().to_vec();
        junk.extend_from_slice(b"garbage");
        assert!(matches!(raw(&socket, &junk), ReplyBody::Error(e) if e.contains("malformed")));
        let huge = u32::MAX.to_le_bytes();
        assert!(matches!(raw(&socket, &huge), ReplyBody::Error(e) if e.contains("larger than")));
    }
    std::thread::sleep(Duration::from_millis(2500));
    assert!(u(&d.status(), "now") >= before + 2, "the interval went on");
}

/// `bwmon slice grant alice 1MiB [--request-id ID]` started in the background.
fn grant_in_background(d: &Daemon, id: Option<&str>) -> std::process::Child {
    let mut c = Command::new(bwmon_bin());
    c.args(["slice", "grant", "alice", "1MiB"]);
    if let Some(id) = id {
        c.args(["--request-id", id]);
    }
    c.arg("--config")
        .arg(d.config())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Alice's general budget in KiB, once it is `want` (the sync that applies a lever publishes
/// it), or whatever it is after a few seconds.
fn budget_once(d: &Daemon, want: u64) -> u64 {
    let mut got = 0;
    for _ in 0..50 {
        got = u(&d.slice("alice").unwrap(), "max_kbyte");
        if got == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    got
}

#[test]
fn a_lever_waits_for_a_slow_sync_and_a_lost_reply_asked_again_is_applied_once() {
    let lab = Lab::new();
    let mut d = Daemon::start(&lab, "interval = \"1h\"\n", &slices());
    assert_eq!(budget_once(&d, 1024), 1024);

    // The sync that applies it takes 8 s (the worker stopped): past the 5 s per request, the
    // CLI waits, says so, and gets its answer.
    let frozen = d.freeze_sync_worker();
    let cli = grant_in_background(&d, None);
    std::thread::sleep(Duration::from_secs(8));
    drop(frozen);
    let out = cli.wait_with_output().unwrap();
    let said = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        said.contains("general budget 1.0 MiB → general budget 2.0 MiB"),
        "{said}"
    );
    assert!(
        stderr.contains("waiting for the daemon to apply request"),
        "{stderr}"
    );
    assert_eq!(budget_once(&d, 2048), 2048);

    // A lost reply: the CLI dies while the sync that applies its grant waits.
    let id = "00000000c0ffee01";
    let frozen = d.freeze_sync_worker();
    let mut cli = grant_in_background(&d, Some(id));
    std::thread::sleep(Duration::from_secs(1));
    cli.kill().unwrap();
    cli.wait().unwrap();
    drop(frozen);
    assert_eq!(budget_once(&d, 3072), 3072, "applied, its reply lost");
    // Asked again under its id (as the CLI does by itself after a lost reply, and as the
    // operator is told to): the first outcome, not a second grant.
    let again = ["slice", "grant", "alice", "1MiB", "--request-id", id];
    let out = ok(&bwmon_as(&d, None, &again));
    assert!(out.contains("not applied twice"), "{out}");
    assert!(
        out.contains("general budget 2.0 MiB → general budget 3.0 MiB"),
        "the first outcome: {out}"
    );
    assert_eq!(budget_once(&d, 3072), 3072);
    // Also after a restart: the id is kept with the lever.
    d.stop(libc::SIGTERM);
    d.restart();
    let out = ok(&bwmon_as(&d, None, &again));
    assert!(out.contains("not applied twice"), "{out}");
    assert_eq!(budget_once(&d, 3072), 3072);
    // The same id for another lever is refused.
    let other = ["slice", "grant", "alice", "2MiB", "--request-id", id];
    let err = refused(&bwmon_as(&d, None, &other));
    assert!(err.contains("was applied to another lever"), "{err}");
    let log = d.log();
    assert!(log.contains("asked again; applied once"), "{log}");
}

#[test]
fn a_lost_reply_with_the_daemon_gone_says_how_to_check_and_retry() {
    let lab = Lab::new();
    let mut d = Daemon::start(&lab, "interval = \"1h\"\n", &slices());
    let frozen = d.freeze_sync_worker();
    let cli = grant_in_background(&d, Some("00000000000000aa"));
    std::thread::sleep(Duration::from_secs(1));
    // The daemon dies before it answers.
    d.signal(libc::SIGKILL);
    drop(frozen);
    d.stop(libc::SIGKILL);
    let out = cli.wait_with_output().unwrap();
    let err = refused(&out);
    assert!(
        err.contains("may or may not have been applied")
            && err.contains("bwmon slice show alice")
            && err.contains("--request-id 00000000000000aa"),
        "{err}"
    );
}
