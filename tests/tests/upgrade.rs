//! An upgrade from a release with the older map layout, under traffic: run with the release's
//! binary in `BWMON_OLD_BIN` and `--ignored` (the suite has no older binary to run). The old
//! daemon counts while a slice sends, is killed, and the new one takes over its pinned maps
//! while the traffic goes on: the slice's usage goes on from the old state (no restart of the
//! counters, the same period), equals what HTB sent for it, and once the new classifier has
//! been in place a while the old maps are folded in and unpinned.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bwmon_common::{legacy, names};
use bwmon_tests::{Daemon, Lab, send_tcp_until, u};

const ALICE: u32 = 4831;

#[test]
#[ignore = "needs BWMON_OLD_BIN: a bwmon of the release to upgrade from"]
fn an_upgrade_under_traffic_loses_and_doubles_nothing() {
    let old = PathBuf::from(std::env::var_os("BWMON_OLD_BIN").expect("BWMON_OLD_BIN"));
    let lab = Lab::new();
    let mut d = Daemon::prepare(
        &lab,
        "period = \"600s\"\ninterval = \"1s\"\n",
        &format!("[[slice]]\nname = \"alice\"\nxid = {ALICE}\n"),
    );
    d.bin = Some(old);
    d.restart();
    let pins = Path::new(bwmon_agent::paths::PIN_ROOT).join(&lab.host_if);
    assert!(pins.join(legacy::OFFERED).exists(), "not the older layout");

    let dst = SocketAddr::new(lab.general_v4.into(), 5801);
    let sink = lab.tcp_sink(dst, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = send_tcp_until(ALICE, dst, stop.clone());
    std::thread::sleep(Duration::from_millis(2500));
    let before = d.slice("alice").unwrap();
    assert!(u(&before, "bytes") > 0, "{before}");

    // The new binary takes over while she sends.
    d.stop(libc::SIGKILL);
    d.bin = None;
    d.restart();
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    assert_eq!(sink.join().unwrap(), sent);
    lab.wait_for_empty_queues();
    std::thread::sleep(Duration::from_millis(2500));

    let after = d.slice("alice").unwrap();
    assert_eq!(
        u(&after, "period_start"),
        u(&before, "period_start"),
        "the same period"
    );
    assert!(
        !d.log().contains("counters restarted"),
        "the counters went on:\n{}",
        d.log()
    );
    let used = u(&after, "bytes");
    assert!(used >= sent, "charged {used} < payload {sent}");
    // Her first bytes went through the default leaf, before her own existed.
    let class = after["classes"][0].as_str().unwrap().to_owned();
    let htb = lab.class_bytes(&class) + lab.class_bytes("1:2");
    let off = used.abs_diff(htb) as f64 / htb as f64;
    eprintln!(
        "alice: status {used} bytes, HTB {htb} bytes ({:.4} %)",
        off * 100.0
    );
    assert!(off <= 0.005, "status {used} vs HTB {htb}");
    for name in [legacy::OFFERED, legacy::OFFERED_ARRAY, legacy::DROPPED] {
        assert!(!pins.join(name).exists(), "{name} still pinned");
    }
    assert!(pins.join(names::CARRIED).exists(), "nothing carried");
}
