//! The embedded classifier, attached to a veth egress, charges each uid exactly what it sent.

use std::{collections::HashMap, net::SocketAddr};

use bwmon_agent::datapath::{Datapath, DatapathOptions};
use bwmon_tests::{Lab, send_tcp_as, send_udp_as};

const UID_A: u32 = 4101;
const UID_B: u32 = 4102;
const UID_C: u32 = 4103;

fn open(lab: &Lab) -> Datapath {
    let mut opts = DatapathOptions::new(lab.host_if.clone());
    opts.pin_root = lab.pin_root.clone();
    Datapath::open(&opts).expect("open the datapath")
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
    let (tx_bytes0, tx_packets0) = lab.host_tx();
    let before: HashMap<u32, (u64, u64)> = dp
        .snapshot()
        .unwrap()
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

    let (tx_bytes1, tx_packets1) = lab.host_tx();
    let after = dp.snapshot().unwrap();
    let delta = |xid: u32| {
        let (b0, p0) = before.get(&xid).copied().unwrap_or((0, 0));
        let c = after.offered.get(&xid).copied().unwrap_or_default();
        (
            c.general.bytes + c.exempt.bytes - b0,
            c.general.packets + c.exempt.packets - p0,
        )
    };
    let ((b, _), (c, _)) = (delta(UID_B), delta(UID_C));
    // Payload plus headers: at least the payload, at most a few percent above it.
    assert!(
        (8 << 20..(8 << 20) * 105 / 100).contains(&b),
        "uid B charged {b}"
    );
    assert!(
        (2 << 20..(2 << 20) * 105 / 100).contains(&c),
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
