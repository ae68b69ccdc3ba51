//! An agent killed with SIGKILL and started again, over and over while traffic flows, neither
//! loses nor doubles a byte: the pinned maps keep counting and the programs are swapped in place.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use bwmon_agent::{
    class::PerClass,
    datapath::{Datapath, DatapathOptions},
    htb::Minor,
};
use bwmon_common::{ClassIds, tc_handle};
use bwmon_tests::{Lab, send_tcp_until};

const UID: u32 = 4301;
const MINOR: u16 = 0x140;
const CHILD_IFACE: &str = "BWMON_TEST_CHILD_IFACE";
const CHILD_PINS: &str = "BWMON_TEST_CHILD_PINS";

fn open(iface: &str, pins: PathBuf) -> Datapath {
    let mut opts = DatapathOptions::new(iface);
    opts.pin_root = pins;
    let mut dp = Datapath::open(&opts).unwrap();
    dp.set_classes(&HashMap::from([(
        UID,
        ClassIds {
            general: tc_handle(1, u32::from(MINOR)),
            exempt: tc_handle(1, u32::from(MINOR) + 1),
        },
    )]))
    .unwrap();
    dp
}

/// Run as a child process by the test below: an "agent" that holds the datapath and reads it
/// until it is killed.
#[test]
#[ignore = "a helper process started by agent_killed_and_restarted_under_traffic"]
fn restart_child() {
    let (Some(iface), Some(pins)) = (std::env::var_os(CHILD_IFACE), std::env::var_os(CHILD_PINS))
    else {
        return;
    };
    let dp = open(iface.to_str().unwrap(), PathBuf::from(pins));
    println!("READY");
    loop {
        let _ = dp.snapshot().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn start_child(lab: &Lab) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "restart_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_IFACE, &lab.host_if)
        .env(CHILD_PINS, &lab.pin_root)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("READY") => break,
            Some(Ok(_)) => continue,
            _ => panic!("the child agent exited before attaching"),
        }
    }
    child
}

#[test]
fn agent_killed_and_restarted_under_traffic_loses_and_doubles_nothing() {
    let lab = Lab::new();
    lab.htb_fixture(&[(MINOR, "10gbit"), (MINOR + 1, "10gbit")]);
    let (root_bytes0, _) = lab.root_qdisc_sent();
    let mut child = start_child(&lab);

    let dst = SocketAddr::new(lab.general_v4.into(), 5401);
    let sink = lab.tcp_sink(dst, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = send_tcp_until(UID, dst, stop.clone());
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(300));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        child = start_child(&lab);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sender.join().unwrap();
    assert_eq!(sink.join().unwrap(), sent);
    lab.wait_for_empty_queues();
    child.kill().unwrap();
    child.wait().unwrap();

    let dp = open(&lab.host_if, lab.pin_root.clone());
    let snap = dp.snapshot().unwrap();
    let classes = lab.tc_classes();
    let htb = classes[&(1, u32::from(MINOR))].bytes;
    let leaves = PerClass {
        general: Some(Minor(MINOR)),
        exempt: Some(Minor(MINOR + 1)),
    };
    // The production formula, the leaves' drops counted from zero (fresh minors).
    let charged = snap.charged_bytes(UID, leaves, PerClass::default()).general;
    eprintln!("sent {sent} payload bytes; charged {charged}, HTB class {htb}");
    assert!(charged >= sent, "charged {charged} < payload {sent}");
    assert_eq!(charged, htb, "charged vs the slice's HTB class");
    // Every byte through the root qdisc since the first start was charged to some xid; the
    // only slack is neighbour discovery enqueued before the first attach.
    let (root_bytes1, _) = lab.root_qdisc_sent();
    let dropped: u64 = snap.dropped.values().map(|c| c.bytes).sum();
    let offered: u64 = snap
        .offered
        .values()
        .map(|c| c.general.bytes + c.exempt.bytes)
        .sum();
    let total = offered - dropped;
    let root = root_bytes1 - root_bytes0;
    assert!(
        total <= root && root - total <= 1000,
        "charged {total}, root qdisc sent {root}"
    );
}
