//! Packet parsing edge cases through `BPF_PROG_TEST_RUN`: the classifier never drops, never
//! changes a byte, charges every frame to its xid, and splits exempt from general for IPv4 and
//! IPv6 only when it can read the destination. (The kernel's test run refuses frames whose IP
//! header is cut short, as the stack never hands such packets to the egress hook; the
//! classifier's reads are bounds-checked helpers that fall back to "general" all the same.)

use std::collections::HashMap;

use bwmon_agent::datapath::Datapath;
use bwmon_common::{ClassIds, XidSource, tc_handle};
use bwmon_tests::{CapturedLog, Lab, frames};

const XID: u32 = 7;
const GENERAL: u32 = tc_handle(1, 0x200);
const EXEMPT: u32 = tc_handle(1, 0x201);
/// TC_ACT_UNSPEC: "next program", never a drop.
const NEXT: i32 = -1;

fn datapath(lab: &Lab) -> Datapath {
    let mut opts = lab.datapath_options();
    opts.xid_source = XidSource::Mark;
    opts.kernel_log = true;
    let mut dp = Datapath::open(&opts).unwrap();
    dp.set_classes(&HashMap::from([(
        XID,
        ClassIds {
            general: GENERAL,
            exempt: EXEMPT,
        },
    )]))
    .unwrap();
    dp.set_exempt(&[
        lab.exempt_net_v4.parse().unwrap(),
        lab.exempt_net_v6.parse().unwrap(),
    ])
    .unwrap();
    dp
}

#[test]
fn frames_are_steered_and_charged_whatever_they_hold() {
    let lab = Lab::new();
    let mut dp = datapath(&lab);
    let src4 = "10.0.0.1".parse().unwrap();
    let src6 = "fd00::1".parse().unwrap();
    let cases: Vec<(&str, Vec<u8>, u32, bool)> = vec![
        (
            "IPv4 general",
            frames::udp_v4(src4, lab.general_v4, 100),
            GENERAL,
            false,
        ),
        (
            "IPv4 exempt",
            frames::udp_v4(src4, lab.exempt_v4, 100),
            EXEMPT,
            true,
        ),
        (
            "IPv6 general",
            frames::udp_v6(src6, lab.general_v6, 100),
            GENERAL,
            false,
        ),
        (
            "IPv6 exempt",
            frames::udp_v6(src6, lab.exempt_v6, 100),
            EXEMPT,
            true,
        ),
        ("ARP (not IP)", frames::arp(), GENERAL, false),
        (
            "IPv4 with options, exempt",
            frames::udp_v4_with_options(src4, lab.exempt_v4, 50),
            EXEMPT,
            true,
        ),
        (
            "bare Ethernet header",
            frames::bare_ethernet(),
            GENERAL,
            false,
        ),
        (
            "VLAN-tagged IPv4 to an exempt address",
            frames::vlan_tagged(&frames::udp_v4(src4, lab.exempt_v4, 60)),
            GENERAL,
            false,
        ),
    ];
    for (what, frame, class, exempt) in cases {
        let before = dp
            .snapshot()
            .unwrap()
            .offered
            .get(&XID)
            .copied()
            .unwrap_or_default();
        let out = dp
            .test_run_classifier(&frame, XID)
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert_eq!(out.verdict, NEXT, "{what}: verdict");
        assert_eq!(out.priority, class, "{what}: class");
        assert!(out.data_unchanged, "{what}: the frame was modified");
        let after = dp.snapshot().unwrap().offered[&XID];
        let (b, a) = if exempt {
            (before.exempt, after.exempt)
        } else {
            (before.general, after.general)
        };
        assert_eq!(a.packets - b.packets, 1, "{what}: packets");
        assert_eq!(a.bytes - b.bytes, frame.len() as u64, "{what}: bytes");
    }
}

#[test]
fn unknown_xids_go_to_the_default_class_and_are_still_counted() {
    let lab = Lab::new();
    let mut dp = datapath(&lab);
    let frame = frames::udp_v4("10.0.0.1".parse().unwrap(), lab.exempt_v4, 10);
    let out = dp.test_run_classifier(&frame, 999).unwrap();
    assert_eq!(out.priority, ClassIds::DEFAULT.exempt);
    let frame = frames::udp_v4("10.0.0.1".parse().unwrap(), lab.general_v4, 10);
    let out = dp.test_run_classifier(&frame, 999).unwrap();
    assert_eq!(out.priority, ClassIds::DEFAULT.general);
    let c = dp.snapshot().unwrap().offered[&999];
    assert_eq!((c.general.packets, c.exempt.packets), (1, 1));
}

#[test]
fn an_ip_ethertype_with_another_version_is_charged_as_general_and_logged() {
    let lab = Lab::new();
    let mut dp = datapath(&lab);
    let log = CapturedLog::default();
    let mut reader = dp.kernel_logger(log.clone()).unwrap();
    let mut frame = frames::udp_v4("10.0.0.1".parse().unwrap(), lab.exempt_v4, 40);
    frame[14] = 0x65; // "version 6" inside an IPv4 ethertype
    let out = dp.test_run_classifier(&frame, XID).unwrap();
    assert_eq!(
        (out.verdict, out.priority),
        (NEXT, GENERAL),
        "not trusted as exempt"
    );
    assert_eq!(
        dp.snapshot().unwrap().offered[&XID].general.bytes,
        frame.len() as u64
    );
    reader.flush();
    let lines = log.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("unexpected packet: ethertype 800 with IP version 6")),
        "{lines:?}"
    );
}

#[test]
fn xids_on_both_sides_of_the_class_array_find_their_leaves_and_lose_them() {
    let lab = Lab::new();
    let mut dp = datapath(&lab);
    let high = bwmon_common::CLASS_ARRAY_XIDS + 34_465; // a container's uid: in the hash
    let last_low = bwmon_common::CLASS_ARRAY_XIDS - 1; // the array's last slot
    let ids = |minor: u32| ClassIds {
        general: tc_handle(1, minor),
        exempt: tc_handle(1, minor + 1),
    };
    let classes = HashMap::from([
        (XID, ids(0x200)),
        (high, ids(0x300)),
        (last_low, ids(0x400)),
    ]);
    dp.set_classes(&classes).unwrap();
    let general = frames::udp_v4("10.0.0.1".parse().unwrap(), lab.general_v4, 10);
    let exempt = frames::udp_v6("fd00::1".parse().unwrap(), lab.exempt_v6, 10);
    for (xid, want) in &classes {
        let out = dp.test_run_classifier(&general, *xid).unwrap();
        assert_eq!(out.priority, want.general, "xid {xid}, general");
        let out = dp.test_run_classifier(&exempt, *xid).unwrap();
        assert_eq!(out.priority, want.exempt, "xid {xid}, exempt");
    }
    // Writing the same table again changes nothing; a changed one moves the packets.
    dp.set_classes(&classes).unwrap();
    let moved = HashMap::from([(high, ids(0x500)), (last_low, ids(0x600))]);
    dp.set_classes(&moved).unwrap();
    for (xid, want) in [
        (XID, ClassIds::DEFAULT.general),
        (high, ids(0x500).general),
        (last_low, ids(0x600).general),
    ] {
        let out = dp.test_run_classifier(&general, xid).unwrap();
        assert_eq!(out.priority, want, "xid {xid} after the change");
    }
    dp.set_classes(&HashMap::new()).unwrap();
    for xid in [XID, high, last_low] {
        let out = dp.test_run_classifier(&general, xid).unwrap();
        assert_eq!(out.priority, ClassIds::DEFAULT.general, "xid {xid} removed");
    }
    let s = dp.snapshot().unwrap();
    assert_eq!(s.offered[&high].general.packets, 3);
    assert_eq!(s.offered[&high].exempt.packets, 1);
}
