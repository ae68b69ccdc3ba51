//! The history on a real daemon: over several short periods, with a restart among them,
//! `bwmon history --json` holds each finished period with the bytes `bwmon status` showed at
//! its end.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use bwmon_tests::{Daemon, Lab, bwmon_bin, send_udp_as, u};

const ALICE: u32 = 4751;

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
    let out = Command::new(bwmon_bin())
        .args(["history", "alice", "--json", "--config"])
        .arg(d.config())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let history: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let recorded: BTreeMap<u64, u64> = history
        .iter()
        .map(|p| (u(p, "start"), p["bytes"]["general"].as_u64().unwrap()))
        .collect();
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
