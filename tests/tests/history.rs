//! The history on a real daemon: over several short periods, with a restart among them,
//! `bwmon history --json` holds each finished period with the bytes `bwmon status` showed at
//! its end; a departed slice's last period is written when its record expires, and a period
//! that ended while bwmon was down with the bytes of the state; the document is valid under its
//! schema.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use bwmon_tests::{Daemon, Lab, bwmon_bin, schema::assert_document, send_udp_as, u};

const ALICE: u32 = 4751;
const BOB: u32 = 4752;

/// `bwmon history SLICE --json`, checked against its schema: the slice's periods, start →
/// general bytes.
fn recorded(d: &Daemon, slice: &str) -> BTreeMap<u64, u64> {
    let out = Command::new(bwmon_bin())
        .args(["history", slice, "--json", "--config"])
        .arg(d.config())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_document("history", &doc);
    let slices = doc["slices"].as_array().unwrap();
    assert!(slices.len() <= 1, "{doc}");
    slices
        .iter()
        .inspect(|s| assert_eq!(s["name"], slice))
        .flat_map(|s| s["periods"].as_array().unwrap())
        .map(|p| (u(p, "start"), u(p, "bytes")))
        .collect()
}

fn slices(names: &[(&str, u32)]) -> String {
    names
        .iter()
        .map(|(name, xid)| format!("[[slice]]\nname = \"{name}\"\nxid = {xid}\n"))
        .collect()
}

#[test]
fn a_departed_slices_last_period_is_recorded_when_its_record_expires() {
    let lab = Lab::new();
    let both = slices(&[("alice", ALICE), ("bob", BOB)]);
    let d = Daemon::start(&lab, "interval = \"1s\"\nperiod = \"8s\"\n", &both);
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    // Bob sends early in a period, then leaves the slices file.
    let (start, bytes) = loop {
        let bob = d.slice("bob").unwrap();
        let (start, now) = (u(&bob, "period_start"), u(&d.status(), "now"));
        if now <= start + 2 {
            send_udp_as(BOB, dst, 5, 1000);
            std::thread::sleep(Duration::from_millis(2500));
            let bob = d.slice("bob").unwrap();
            assert_eq!(u(&bob, "period_start"), start);
            break (start, u(&bob, "bytes"));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(bytes > 0);
    d.write_slices(&slices(&[("alice", ALICE)]));
    std::thread::sleep(Duration::from_secs(2));
    assert!(d.slice("bob").is_none(), "departed: no line");
    assert_eq!(
        recorded(&d, "bob").get(&start),
        None,
        "kept until its period ends"
    );
    // Its period ends at start + 8: its record expires and its period is written.
    let deadline = Instant::now() + Duration::from_secs(20);
    while recorded(&d, "bob").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(recorded(&d, "bob"), BTreeMap::from([(start, bytes)]));
    assert!(d.log().contains("departed slice's period ended; forgotten"));
}

#[test]
fn a_period_that_ended_while_bwmon_was_down_is_recorded_with_the_states_bytes() {
    let lab = Lab::new();
    // A period's interval: the first sync's sample (nothing used) is the hour's only one.
    let config = "interval = \"12s\"\nperiod = \"12s\"\n";
    let mut d = Daemon::start(&lab, config, &slices(&[("alice", ALICE)]));
    let start = u(&d.slice("alice").unwrap(), "period_start");
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    send_udp_as(ALICE, dst, 5, 1000);
    std::thread::sleep(Duration::from_millis(200));
    d.sync_now();
    let bytes = u(&d.slice("alice").unwrap(), "bytes");
    assert!(bytes > 0);
    assert_eq!(u(&d.slice("alice").unwrap(), "period_start"), start);
    // Stopped (the state saved with those bytes) until the period is over.
    d.stop(libc::SIGTERM);
    while bwmon_tests_now() < start + 14 {
        std::thread::sleep(Duration::from_millis(250));
    }
    d.restart();
    assert!(u(&d.slice("alice").unwrap(), "period_start") > start);
    assert_eq!(
        recorded(&d, "alice").get(&start),
        Some(&bytes),
        "the state's bytes"
    );
}

/// The wall clock, as the daemon reads it.
fn bwmon_tests_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn finished_periods_are_kept_with_what_status_showed_at_their_end() {
    let lab = Lab::new();
    let slices = format!("[[slice]]\nname = \"alice\"\nxid = {ALICE}\n");
    let mut d = Daemon::start(&lab, "interval = \"1s\"\nperiod = \"20s\"\n", &slices);
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    // period start → the bytes status showed last in it.
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    let started = Instant::now();
    let mut restarted = false;
    while seen.len() < 4 && started.elapsed() < Duration::from_secs(120) {
        let s = d.status();
        let now = u(&s, "now");
        if let Some(alice) = d.slice("alice") {
            let start = u(&alice, "period_start");
            seen.insert(start, u(&alice, "bytes"));
            // Quiet in each period's last seconds, so its last syncs all agree.
            if now < start + 14 {
                send_udp_as(ALICE, dst, 5, 1000);
            }
        }
        if seen.len() == 2 && !restarted {
            d.stop(libc::SIGTERM);
            d.restart();
            restarted = true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(seen.len() >= 4, "saw periods {seen:?}");
    let recorded = recorded(&d, "alice");
    // Every period that ended while we watched (all but the current one).
    let finished: Vec<(&u64, &u64)> = seen.iter().take(seen.len() - 1).collect();
    for (start, bytes) in finished {
        assert_eq!(
            recorded.get(start),
            Some(bytes),
            "period from {start}: status showed {bytes}; history {recorded:?}"
        );
        assert!(*bytes > 0);
    }
    let text = Command::new(bwmon_bin())
        .args(["history", "--config"])
        .arg(d.config())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("alice (xid 4751)") && text.contains('░') && text.contains("of 5.4 GiB"),
        "{text}"
    );
}
