//! The embedded classifier, attached to a veth egress, charges each uid exactly what it sent.

use std::{collections::HashMap, net::SocketAddr};

use bwmon_agent::datapath::Datapath;
use bwmon_tests::{Lab, send_tcp_as, send_udp_as, tcp_wire_at_most};

const UID_A: u32 = 4101;
const UID_B: u32 = 4102;
const UID_C: u32 = 4103;

fn open(lab: &Lab) -> Datapath {
    Datapath::open(&lab.datapath_options()).expect("open the datapath")
}

#[test]
fn udp_bytes_per_uid_are_counted_exactly() {
    let lab = Lab::new();
    let dp = open(&lab);
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    let before = dp.snapshot().unwrap();
    assert!(!before.offered.contains_key(&UID_A) && !before.offered.contains_key(&UID_B));

    let wire_a = send_udp_as(UID_A, dst, 300, 1000);
    let wire_b = send_udp_as(UID_B, dst, 50, 1400);

    let after = dp.snapshot().unwrap();
    let a = after.offered[&UID_A];
    let b = after.offered[&UID_B];
    assert_eq!(a.general.packets, 300);
    assert_eq!(a.general.bytes, 300 * wire_a);
    assert_eq!(b.general.packets, 50);
    assert_eq!(b.general.bytes, 50 * wire_b);
    assert_eq!((a.exempt.bytes, b.exempt.bytes), (0, 0));
    assert_eq!(after.offered_overflow.general.packets, 0);
}

#[test]
fn tcp_bytes_per_uid_match_the_interface() {
    let lab = Lab::new();
    let dp = open(&lab);
    let dst = SocketAddr::new(lab.general_v4.into(), 5201);
    let sink = lab.tcp_sink(dst, 2);
    // Packets may still be leaving (the sink's SYN-ACKs, the last ACKs and FINs): read the
    // interface and the counters until two readings agree, so both describe the same packets.
    let quiet = || {
        let reading = || (lab.host_tx(), dp.snapshot().unwrap());
        let (mut tx, mut snap) = reading();
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let (tx2, snap2) = reading();
            let same = tx2 == tx && snap2.offered == snap.offered;
            (tx, snap) = (tx2, snap2);
            if same {
                break;
            }
        }
        (tx, snap)
    };
    let ((tx_bytes0, tx_packets0), first) = quiet();
    let before: HashMap<u32, (u64, u64)> = first
        .offered
        .iter()
        .map(|(x, c)| {
            (
                *x,
                (
                    c.general.bytes + c.exempt.bytes,
                    c.general.packets + c.exempt.packets,
                ),
            )
        })
        .collect();

    send_tcp_as(UID_B, dst, 8 << 20);
    send_tcp_as(UID_C, dst, 2 << 20);
    assert_eq!(sink.join().unwrap(), 10 << 20);

    let (tx, after) = quiet();
    let (tx_bytes1, tx_packets1) = tx;
    let delta = |xid: u32| {
        let (b0, p0) = before.get(&xid).copied().unwrap_or((0, 0));
        let c = after.offered.get(&xid).copied().unwrap_or_default();
        (
            c.general.bytes + c.exempt.bytes - b0,
            c.general.packets + c.exempt.packets - p0,
        )
    };
    let ((b, _), (c, _)) = (delta(UID_B), delta(UID_C));
    // Payload plus headers (and what was sent again): at least the payload.
    assert!(
        (8 << 20..=tcp_wire_at_most(8 << 20)).contains(&b),
        "uid B charged {b}"
    );
    assert!(
        (2 << 20..=tcp_wire_at_most(2 << 20)).contains(&c),
        "uid C charged {c}"
    );
    // Every packet that left the interface was charged to some xid. The veth counts GSO
    // super-packets by `skb->len`; we charge wire length (what HTB counts: headers of every
    // segment), so bytes are a little above the veth's and never below.
    let (charged_bytes, charged_packets) = after
        .offered
        .keys()
        .map(|x| delta(*x))
        .fold((0, 0), |(b, p), (db, dp)| (b + db, p + dp));
    assert_eq!(
        charged_packets,
        tx_packets1 - tx_packets0,
        "packets vs veth tx_packets"
    );
    let tx = tx_bytes1 - tx_bytes0;
    assert!(
        (tx..=tx * 106 / 100).contains(&charged_bytes),
        "charged {charged_bytes} bytes, veth sent {tx}"
    );
}

#[test]
fn clsact_attachment_counts_is_replaced_in_place_and_torn_down() {
    use bwmon_agent::datapath::{AttachMode, teardown};
    let lab = Lab::new();
    let mut opts = lab.datapath_options();
    opts.attach_mode = AttachMode::Clsact;
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    let filters = || {
        let out = bwmon_tests::cmd("tc", &["filter", "show", "dev", &lab.host_if, "egress"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("handle 0xb3a0") && l.contains("bwmon_classify"))
            .count()
    };

    let dp = Datapath::open(&opts).unwrap();
    let wire = send_udp_as(UID_A, dst, 10, 100);
    assert_eq!(
        dp.snapshot().unwrap().offered[&UID_A].general.bytes,
        10 * wire
    );
    drop(dp);
    assert_eq!(filters(), 1, "the filter outlives the process");

    // A second start replaces the filter (still one) and keeps the counts.
    let dp = Datapath::open(&opts).unwrap();
    assert_eq!(filters(), 1);
    send_udp_as(UID_A, dst, 5, 100);
    assert_eq!(
        dp.snapshot().unwrap().offered[&UID_A].general.bytes,
        15 * wire
    );
    drop(dp);

    teardown(&lab.pin_root, &lab.host_if).unwrap();
    assert_eq!(filters(), 0, "teardown removes the filter");
    assert!(
        !lab.pin_root.join(&lab.host_if).exists(),
        "teardown removes the pins"
    );
    // ... and the clsact qdisc it added, now empty (as `bwmon teardown` does).
    let mut htb = bwmon_agent::htb::Htb::open(&lab.host_if).unwrap();
    assert!(htb.remove_empty_clsact().unwrap());
    let qdiscs = bwmon_tests::cmd("tc", &["qdisc", "show", "dev", &lab.host_if]);
    let text = String::from_utf8_lossy(&qdiscs.stdout);
    assert!(!text.contains("clsact"), "{text}");
}

#[test]
fn a_clsact_filter_lost_with_its_interface_is_attached_again_at_the_next_check() {
    use bwmon_agent::datapath::AttachMode;
    let lab = Lab::new();
    let mut opts = lab.datapath_options();
    opts.attach_mode = AttachMode::Clsact;
    let mut dp = Datapath::open(&opts).unwrap();
    assert!(!dp.ensure_attached().unwrap(), "in place");
    // The interface goes away and comes back under the same name, without our filter.
    bwmon_tests::cmd("ip", &["link", "del", &lab.host_if]);
    lab.recreate_veth();
    assert!(dp.ensure_attached().unwrap(), "attached again");
    assert!(!dp.ensure_attached().unwrap(), "and then in place");
    let wire = send_udp_as(UID_A, SocketAddr::new(lab.general_v4.into(), 9), 7, 100);
    assert_eq!(
        dp.snapshot().unwrap().offered[&UID_A].general.bytes,
        7 * wire
    );
}

#[test]
fn teardown_of_a_tcx_datapath_stops_counting_and_removes_pins() {
    use bwmon_agent::datapath::teardown;
    let lab = Lab::new();
    use aya::programs::{SchedClassifier, TcAttachType};
    let attached = || {
        SchedClassifier::query_tcx(&lab.host_if, TcAttachType::Egress)
            .unwrap()
            .1
            .len()
    };
    let dp = open(&lab);
    drop(dp);
    let pins = lab.pin_root.join(&lab.host_if);
    assert!(pins.join("link_egress").exists());
    assert_eq!(
        attached(),
        1,
        "the pinned link keeps the classifier attached"
    );
    teardown(&lab.pin_root, &lab.host_if).unwrap();
    assert!(!pins.exists());
    // The kernel releases an unpinned link asynchronously.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while attached() != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(attached(), 0, "teardown detached the classifier");
    // A fresh load starts from new, empty counters.
    let dp = open(&lab);
    send_udp_as(UID_B, SocketAddr::new(lab.general_v4.into(), 9), 3, 10);
    assert_eq!(dp.snapshot().unwrap().offered[&UID_B].general.packets, 3);
}

#[test]
fn a_re_created_interface_is_attached_again() {
    let lab = Lab::new();
    drop(open(&lab));
    // The interface goes away and comes back under the same name: the pinned link is dead.
    bwmon_tests::cmd("ip", &["link", "del", &lab.host_if]);
    lab.recreate_veth();
    let dp = open(&lab);
    let wire = send_udp_as(UID_A, SocketAddr::new(lab.general_v4.into(), 9), 7, 100);
    assert_eq!(
        dp.snapshot().unwrap().offered[&UID_A].general.bytes,
        7 * wire
    );
}
