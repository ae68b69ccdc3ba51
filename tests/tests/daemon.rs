//! `bwmon run` end to end, in a network namespace with a short period and a 1 s interval.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use bwmon_tests::{Daemon, Lab, send_tcp_as, send_tcp_until, send_udp_as, u};

const ALICE: u32 = 4801;
const BOB: u32 = 4802;

#[test]
fn a_slice_flat_out_uses_its_budget_and_no_more_and_is_restored_next_period() {
    let lab = Lab::new();
    // Flat out is 20 mbit × 40 s = 100 MB; the budget is a third of that.
    let d = Daemon::start(
        &lab,
        &format!(
            "node_cap = \"20mbit\"\nperiod = \"40s\"\ninterval = \"1s\"\nexempt_prefixes = [\"{}\"]\n[defaults]\nnet_max_kbyte = 32552\nnet_i2_max_kbyte = 100000\n",
            lab.exempt_net_v4
        ),
        &format!("[[slice]]\nname = \"alice\"\nxid = {ALICE}\n"),
    );
    let start = d.slice("alice").unwrap();
    let period_start = u(&start, "period_start");
    let max = u(&start, "max_kbyte") * 1024;

    let general = SocketAddr::new(lab.general_v4.into(), 5601);
    let exempt = SocketAddr::new(lab.exempt_v4.into(), 5602);
    let sink = lab.tcp_sink(general, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let flow = send_tcp_until(ALICE, general, stop.clone());
    // A little exempt traffic, on its own budget.
    let exempt_sink = lab.tcp_sink(exempt, 1);
    send_tcp_as(ALICE, exempt, 2 << 20);
    exempt_sink.join().unwrap();

    let mut last_in_period = start.clone();
    let mut after_reset = None;
    let deadline = Instant::now() + Duration::from_secs(70);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let s = d.slice("alice").unwrap();
        if u(&s, "period_start") == period_start {
            last_in_period = s;
        } else {
            after_reset = Some(s);
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flow.join().unwrap();
    let _ = sink.join();

    let used = u(&last_in_period, "bytes");
    let pct = used as f64 * 100.0 / max as f64;
    eprintln!("alice used {used} of {max} bytes ({pct:.1} %), sent {sent} payload bytes");
    assert!(
        (95.0..=101.0).contains(&pct),
        "used {pct:.1} % of the budget"
    );
    assert_eq!(last_in_period["capped"], true);
    assert_eq!(last_in_period["emailed"], true);
    // Exempt traffic: counted on its own, not capped.
    assert!(u(&last_in_period, "exempt_bytes") >= 2 << 20);
    assert_eq!(last_in_period["exempt_capped"], false);
    // Within one interval of the reset: back at full ceiling.
    let after = after_reset.expect("the period ended");
    assert_eq!(after["capped"], false, "{after}");
    assert_eq!(u(&after, "ceil_bps"), u(&after, "max_rate_bps"));
    assert_eq!(after["emailed"], false);
}

#[test]
fn sigkill_and_restart_mid_period_lose_nothing() {
    let lab = Lab::new();
    let mut d = Daemon::start(
        &lab,
        "period = \"300s\"\ninterval = \"1s\"\n",
        &format!(
            "[[slice]]\nname = \"alice\"\nxid = {ALICE}\n[[slice]]\nname = \"bob\"\nxid = {BOB}\n"
        ),
    );
    let dst = SocketAddr::new(lab.general_v4.into(), 5611);
    let sink = lab.tcp_sink(dst, 1);
    send_tcp_as(ALICE, dst, 6 << 20);
    sink.join().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let before = d.slice("alice").unwrap();
    let used_before = u(&before, "bytes");
    assert!(used_before >= 6 << 20, "{before}");

    // Killed hard; traffic goes on while it is down.
    d.stop(libc::SIGKILL);
    let sink = lab.tcp_sink(dst, 1);
    send_tcp_as(ALICE, dst, 3 << 20);
    sink.join().unwrap();
    let wire = send_udp_as(BOB, SocketAddr::new(lab.general_v4.into(), 9), 100, 1000);
    d.restart();
    std::thread::sleep(Duration::from_millis(2500));
    let after = d.slice("alice").unwrap();
    assert_eq!(
        u(&after, "period_start"),
        u(&before, "period_start"),
        "nothing reset"
    );
    let used_after = u(&after, "bytes");
    assert!(
        used_after >= used_before + (3 << 20),
        "{used_before} -> {used_after}"
    );
    // bwmon's bytes agree with what HTB sent for the slice.
    let classes: Vec<String> = after["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    // Her first bytes went through the default leaf, before her own existed (classes on
    // demand); through it went also bob's datagrams (he has no leaf), and nothing else.
    let htb = lab.class_bytes(&classes[0]) + lab.class_bytes("1:2") - 100 * wire;
    let off = used_after.abs_diff(htb) as f64 / htb as f64;
    eprintln!(
        "alice: status {used_after} bytes, HTB {htb} bytes ({:.4} %)",
        off * 100.0
    );
    assert!(off <= 0.005, "status {used_after} vs HTB {htb}");
    assert_eq!(
        u(&d.slice("bob").unwrap(), "bytes"),
        100 * wire,
        "sent while down, counted"
    );

    // SIGTERM: exit 0, state saved, datapath left counting.
    let status = d.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(d.dir.join("state").exists());
    let pins = std::path::Path::new(bwmon_agent::paths::PIN_ROOT).join(&lab.host_if);
    assert!(pins.join("link_egress").exists(), "datapath left attached");
}

#[test]
fn slices_come_and_go_orphans_vanish_and_a_broken_file_changes_nothing() {
    let lab = Lab::new();
    let both = format!(
        "[[slice]]\nname = \"alice\"\nxid = {ALICE}\nnet_max_kbyte = 1000\n[[slice]]\nname = \"bob\"\nxid = {BOB}\n"
    );
    let d = Daemon::start(&lab, "period = \"300s\"\ninterval = \"1s\"\n", &both);
    let dst = SocketAddr::new(lab.general_v4.into(), 5621);
    let sink = lab.tcp_sink(dst, 1);
    send_tcp_as(ALICE, dst, 2 << 20);
    sink.join().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let capped = d.slice("alice").unwrap();
    assert_eq!(capped["capped"], true, "{capped}");
    let class = capped["classes"][0].as_str().unwrap().to_owned();

    // Removed: its class goes, its record stays.
    d.write_slices(&format!("[[slice]]\nname = \"bob\"\nxid = {BOB}\n"));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(d.slice("alice").is_none());
    assert_eq!(lab.class_bytes(&class), 0, "class removed");
    // Back within its period: no fresh budget.
    d.write_slices(&both);
    std::thread::sleep(Duration::from_millis(2500));
    let back = d.slice("alice").unwrap();
    assert_eq!(back["period_start"], capped["period_start"]);
    assert_eq!(back["capped"], true);
    assert_eq!(back["emailed"], true);

    // An orphan class added by hand is removed.
    lab.tc(&[
        "class", "add", "dev", "{dev}", "parent", "1:10", "classid", "1:7777", "htb", "rate",
        "1mbit",
    ]);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !lab.tc_classes().contains_key(&(1, 0x7777)),
        "orphan left in place"
    );

    // A broken slices file leaves the running configuration untouched.
    // (A file that parses but has a bad entry applies the others: see the service tests.)
    d.write_slices("[[slice]]\nname = \"carol\"\nxid = 17\n[[slice\n");
    std::thread::sleep(Duration::from_millis(2500));
    let names: Vec<String> = d.status()["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["root", "default", "alice", "bob"]);
    assert!(d.log().contains("slices file rejected"), "{}", d.log());
    let errors = d.status()["errors"].to_string();
    assert!(errors.contains("slices"), "{errors}");

    // SIGHUP re-reads the file at once (here: a good one again).
    d.write_slices(&format!("[[slice]]\nname = \"bob\"\nxid = {BOB}\n"));
    d.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(d.log().contains("SIGHUP: re-reading the slices file"));
    assert!(d.slice("alice").is_none());
}
