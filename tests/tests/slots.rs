//! Counter slots: an xid that sends without one gets one and its counts go on exactly, a
//! restart reads the assignment back, and a slot taken back from an idle xid without a record
//! is zeroed before another xid gets it, its bytes still the first xid's.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::Path,
    time::Duration,
};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuHashMap};
use bwmon_agent::datapath::{Datapath, DatapathOptions, slots::QUIET};
use bwmon_common::{
    CLASS_ARRAY_XIDS, ClassIds, XidCounters, XidEntry, XidSource, names, tc_handle,
};
use bwmon_tests::{Lab, send_udp_marked};

fn options(lab: &Lab) -> DatapathOptions {
    let mut opts = lab.datapath_options();
    opts.xid_source = XidSource::Mark;
    opts
}

fn pins(lab: &Lab) -> std::path::PathBuf {
    lab.pin_root.join(&lab.host_if)
}

fn pinned(dir: &Path, name: &str, kind: fn(MapData) -> Map) -> Map {
    kind(MapData::from_pin(dir.join(name)).unwrap())
}

/// The xid's entry as the classifier finds it.
fn entry(lab: &Lab, xid: u32) -> XidEntry {
    let dir = pins(lab);
    if xid < CLASS_ARRAY_XIDS {
        let map = pinned(&dir, names::XID_ARRAY, Map::Array);
        let array: Array<&MapData, XidEntry> = Array::try_from(&map).unwrap();
        array.get(&xid, 0).unwrap()
    } else {
        let map = pinned(&dir, names::XID_HASH, Map::HashMap);
        let hash: BpfHashMap<&MapData, u32, XidEntry> = BpfHashMap::try_from(&map).unwrap();
        hash.get(&xid, 0).unwrap_or_default()
    }
}

/// The xid's entry in the hash of xids without a slot, summed over CPUs.
fn unslotted(lab: &Lab, xid: u32) -> XidCounters {
    let map = pinned(&pins(lab), names::UNSLOTTED, Map::PerCpuHashMap);
    let hash: PerCpuHashMap<&MapData, u32, XidCounters> = PerCpuHashMap::try_from(&map).unwrap();
    hash.get(&xid, 0)
        .map(|v| v.iter().fold(XidCounters::default(), |a, c| a.merged(*c)))
        .unwrap_or_default()
}

fn ids(minor: u32) -> ClassIds {
    ClassIds {
        general: tc_handle(1, minor),
        exempt: tc_handle(1, minor + 1),
    }
}

#[test]
fn an_xid_that_sends_without_a_slot_gets_one_and_its_counts_go_on_exactly() {
    let lab = Lab::new();
    let mut dp = Datapath::open(&options(&lab)).unwrap();
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    let none = HashSet::new();
    // The first look only notes what there is.
    dp.tend_counters(&dp.snapshot().unwrap(), &none).unwrap();
    let xids = [5001, CLASS_ARRAY_XIDS + 5001];
    let mut wire = 0;
    for xid in xids {
        wire = send_udp_marked(Some(xid), None, dst, 10, 100);
    }
    let s = dp.snapshot().unwrap();
    for xid in xids {
        assert_eq!(s.offered[&xid].general.packets, 10, "xid {xid}");
        assert_eq!(entry(&lab, xid).slot, 0, "xid {xid} has no slot yet");
    }
    dp.tend_counters(&s, &none).unwrap();
    let slots = xids.map(|x| entry(&lab, x).slot);
    assert!(
        slots.iter().all(|s| *s != 0) && slots[0] != slots[1],
        "{slots:?}"
    );

    for xid in xids {
        send_udp_marked(Some(xid), None, dst, 7, 100);
    }
    let s = dp.snapshot().unwrap();
    for xid in xids {
        let c = s.offered[&xid].general;
        assert_eq!((c.packets, c.bytes), (17, 17 * wire), "xid {xid}");
        // Counted in the slot now: the hash entry keeps what it had.
        assert_eq!(unslotted(&lab, xid).general.packets, 10, "xid {xid}");
    }
    drop(dp);

    // A restart reads the assignment back.
    let dp = Datapath::open(&options(&lab)).unwrap();
    assert_eq!(xids.map(|x| entry(&lab, x).slot), slots);
    for xid in xids {
        send_udp_marked(Some(xid), None, dst, 3, 100);
    }
    let s = dp.snapshot().unwrap();
    for xid in xids {
        assert_eq!(s.offered[&xid].general.packets, 20, "xid {xid}");
    }
}

#[test]
fn a_slot_taken_from_an_idle_xid_is_zeroed_before_another_gets_it() {
    let lab = Lab::new();
    let mut opts = options(&lab);
    opts.slot_idle = Duration::ZERO;
    let mut dp = Datapath::open(&opts).unwrap();
    let dst = SocketAddr::new(lab.general_v4.into(), 9);
    // Root (mark 0: the kernel's own packets) has a slot throughout, so nothing else moves.
    let (root, a, b, c) = (0, 6001, 6002, 6003);
    dp.set_classes(&HashMap::from([(root, ids(0x10)), (a, ids(0x20))]))
        .unwrap();
    let slot_a = entry(&lab, a).slot;
    assert_ne!(slot_a, 0);
    let wire = send_udp_marked(Some(a), None, dst, 5, 100);
    let s = dp.snapshot().unwrap();
    dp.tend_counters(&s, &HashSet::from([root, a])).unwrap();

    // Its leaves go; its record stays: it keeps the slot.
    dp.set_classes(&HashMap::from([(root, ids(0x10))])).unwrap();
    dp.tend_counters(&dp.snapshot().unwrap(), &HashSet::from([root, a]))
        .unwrap();
    assert_eq!(entry(&lab, a), XidEntry::EMPTY.with_slot(slot_a));
    // Its record is forgotten and it is idle: the slot is taken back, the bytes stay its.
    dp.tend_counters(&dp.snapshot().unwrap(), &HashSet::from([root]))
        .unwrap();
    assert_eq!(entry(&lab, a), XidEntry::EMPTY);
    assert_eq!(dp.snapshot().unwrap().offered[&a].general.packets, 5);
    // Not given again before it is zeroed.
    dp.set_classes(&HashMap::from([(root, ids(0x10)), (b, ids(0x30))]))
        .unwrap();
    assert_ne!(entry(&lab, b).slot, slot_a);

    // A new slice sends (without a slot: in the hash); once the slot is zeroed, it is the
    // first to get one (it has a record), and gets the lowest free.
    send_udp_marked(Some(c), None, dst, 1, 100);
    std::thread::sleep(QUIET + Duration::from_millis(200));
    let kept = HashSet::from([root, b, c]);
    dp.tend_counters(&dp.snapshot().unwrap(), &kept).unwrap();
    assert_eq!(dp.snapshot().unwrap().offered[&a].general.packets, 5);
    assert_eq!(entry(&lab, c).slot, slot_a, "the lowest free slot");
    send_udp_marked(Some(c), None, dst, 3, 100);
    send_udp_marked(Some(a), None, dst, 2, 100);
    let s = dp.snapshot().unwrap();
    let got = s.offered[&c].general;
    assert_eq!((got.packets, got.bytes), (4, 4 * wire));
    assert_eq!(
        unslotted(&lab, c).general.packets,
        1,
        "3 in the slot: zeroed before reuse"
    );
    assert_eq!(
        s.offered[&a].general.packets, 7,
        "its own bytes, and the new ones"
    );
}
