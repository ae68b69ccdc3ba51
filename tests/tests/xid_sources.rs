//! Where a packet's xid comes from: the socket mark, or the source address (for routed or
//! bridged tenants without a local socket); and what happens when the xid map is full.

use std::net::{IpAddr, SocketAddr};

use bwmon_agent::datapath::Datapath;
use bwmon_common::{MAX_XIDS, ROOT_XID, XidCounters, XidSource, names};
use bwmon_tests::{CapturedLog, Lab, cmd, send_udp_marked, set_mark};

fn open(lab: &Lab, source: XidSource) -> Datapath {
    let mut opts = lab.datapath_options();
    opts.xid_source = source;
    Datapath::open(&opts).unwrap()
}

#[test]
fn mark_mode_charges_the_packet_mark() {
    let lab = Lab::new();
    let dp = open(&lab, XidSource::Mark);
    let v4 = SocketAddr::new(lab.general_v4.into(), 9);
    let v6 = SocketAddr::new(lab.exempt_v6.into(), 9);
    let w1 = send_udp_marked(Some(70001), None, v4, 40, 500);
    let w2 = send_udp_marked(Some(70002), None, v6, 25, 800);
    let snap = dp.snapshot().unwrap();
    assert_eq!(snap.offered[&70001].general.bytes, 40 * w1);
    // No exempt prefixes configured here: everything is general.
    assert_eq!(snap.offered[&70002].general.bytes, 25 * w2);
    assert_eq!(snap.offered[&70002].general.packets, 25);
}

#[test]
fn source_mode_charges_the_tenant_owning_the_source_prefix() {
    let lab = Lab::new();
    // Two tenant addresses on the host side, as a router would forward for them.
    let t1_v4: IpAddr = format!("10.211.{}.11", lab.lab_no).parse().unwrap();
    let t2_v6: IpAddr = format!("fd00:211:{}::12", lab.lab_no).parse().unwrap();
    cmd(
        "ip",
        &["addr", "add", &format!("{t1_v4}/32"), "dev", &lab.host_if],
    );
    cmd(
        "ip",
        &[
            "-6",
            "addr",
            "add",
            &format!("{t2_v6}/128"),
            "dev",
            &lab.host_if,
            "nodad",
        ],
    );
    let mut dp = open(&lab, XidSource::Source);
    dp.set_sources(&[
        (format!("{t1_v4}/32").parse().unwrap(), 80001),
        (format!("{t2_v6}/120").parse().unwrap(), 80002),
    ])
    .unwrap();
    let w1 = send_udp_marked(
        None,
        Some(t1_v4),
        SocketAddr::new(lab.general_v4.into(), 9),
        30,
        600,
    );
    let w2 = send_udp_marked(
        None,
        Some(t2_v6),
        SocketAddr::new(lab.general_v6.into(), 9),
        20,
        700,
    );
    // From the interface's own address: no tenant prefix matches, the root slice pays.
    let before_root = dp
        .snapshot()
        .unwrap()
        .offered
        .get(&ROOT_XID)
        .map(|c| c.general.packets)
        .unwrap_or(0);
    send_udp_marked(
        None,
        None,
        SocketAddr::new(lab.general_v4.into(), 9),
        10,
        100,
    );
    let snap = dp.snapshot().unwrap();
    assert_eq!(snap.offered[&80001].general.bytes, 30 * w1);
    // The kernel's neighbour solicitations for the tenant's packets carry its source address:
    // they are its traffic too (86 bytes each).
    let t2 = snap.offered[&80002].general;
    let nd = t2.packets - 20;
    assert!(nd <= 2, "{t2:?}");
    assert_eq!(t2.bytes, 20 * w2 + nd * 86);
    assert!(snap.offered[&ROOT_XID].general.packets >= before_root + 10);

    // Replacing the prefixes moves the tenant without a restart.
    dp.set_sources(&[(format!("{t1_v4}/32").parse().unwrap(), 80003)])
        .unwrap();
    let w3 = send_udp_marked(
        None,
        Some(t1_v4),
        SocketAddr::new(lab.general_v4.into(), 9),
        5,
        100,
    );
    let snap2 = dp.snapshot().unwrap();
    assert_eq!(snap2.offered[&80003].general.bytes, 5 * w3);
    assert_eq!(
        snap2.offered[&80001], snap.offered[&80001],
        "old tenant no longer charged"
    );
}

#[test]
fn xids_beyond_capacity_are_counted_in_the_overflow_slot() {
    let lab = Lab::new();
    let mut opts = lab.datapath_options();
    opts.xid_source = XidSource::Mark;
    opts.kernel_log = true;
    let mut dp = Datapath::open(&opts).unwrap();
    let captured = CapturedLog::default();
    let mut kernel_log = dp.kernel_logger(captured.clone()).unwrap();
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    const EXTRA: u32 = 40;
    let first = 1_000_000u32;
    for i in 0..MAX_XIDS + EXTRA {
        set_mark(&sock, first + i);
        sock.send_to(&[0u8; 18], dst).unwrap();
    }
    let snap = dp.snapshot().unwrap();
    // No xid was given a counter slot: every one is in the hash (also the few xids of
    // neighbour discovery, mark 0).
    let pin = lab.pin_root.join(&lab.host_if).join(names::UNSLOTTED);
    let hash = aya::maps::PerCpuHashMap::<_, u32, XidCounters>::try_from(
        aya::maps::Map::PerCpuHashMap(aya::maps::MapData::from_pin(pin).unwrap()),
    )
    .unwrap();
    let in_hash = hash.keys().count();
    assert_eq!(in_hash as u32, MAX_XIDS, "the map is full");
    let ours_in_map = snap
        .offered
        .iter()
        .filter(|(x, _)| (first..first + MAX_XIDS + EXTRA).contains(x))
        .map(|(_, c)| c.general.packets)
        .sum::<u64>();
    // Every packet is somewhere: in its xid's slot or in the overflow slot (which may also
    // hold a few neighbour-discovery packets of other new xids).
    let ours_overflowed = u64::from(MAX_XIDS + EXTRA) - ours_in_map;
    let overflow = snap.offered_overflow.general;
    assert!(ours_overflowed >= u64::from(EXTRA), "{ours_overflowed}");
    assert!(
        (ours_overflowed..=ours_overflowed + 5).contains(&overflow.packets),
        "overflow slot holds {} packets, {ours_overflowed} of ours",
        overflow.packets
    );
    assert!(overflow.bytes >= ours_overflowed * (18 + 8 + 20 + 14));

    // The kernel said so, at most once a second per CPU.
    kernel_log.flush();
    let lines = captured.lines();
    assert!(
        lines.iter().any(|l| l.contains("overflow slot")),
        "kernel log: {lines:?}"
    );
    assert!(
        lines.len() <= 2 * 4,
        "not rate-limited: {} lines",
        lines.len()
    );
}
