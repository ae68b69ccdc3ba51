//! Ethernet frames for `BPF_PROG_TEST_RUN`.

use std::net::{Ipv4Addr, Ipv6Addr};

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An IPv4 UDP frame with `payload` bytes.
pub fn udp_v4(src: Ipv4Addr, dst: Ipv4Addr, payload: usize) -> Vec<u8> {
    let mut f = eth(0x0800);
    let total = (20 + 8 + payload) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend(udp(payload));
    f
}

/// A UDP header (port 12345 → 9, no checksum) and `payload` bytes.
fn udp(payload: usize) -> Vec<u8> {
    let mut u = vec![0x30, 0x39, 0, 9];
    u.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend(std::iter::repeat_n(0x5a, payload));
    u
}

/// An IPv6 UDP frame with `payload` bytes.
pub fn udp_v6(src: Ipv6Addr, dst: Ipv6Addr, payload: usize) -> Vec<u8> {
    let mut f = eth(0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[17, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend(udp(payload));
    f
}

/// An ARP request (not IP).
pub fn arp() -> Vec<u8> {
    let mut f = eth(0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 10, 0, 0, 1]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
    f
}

/// A bare Ethernet header with a local experimental ethertype: the shortest frame there is.
pub fn bare_ethernet() -> Vec<u8> {
    eth(0x88b5)
}

/// An 802.1Q-tagged IPv4 frame (the classifier does not look inside VLAN tags).
pub fn vlan_tagged(inner: &[u8]) -> Vec<u8> {
    let mut f = eth(0x8100);
    f.extend_from_slice(&[0, 5]);
    f.extend_from_slice(&inner[12..]);
    f
}

/// An IPv4 UDP frame whose header carries 4 bytes of options (IHL 6).
pub fn udp_v4_with_options(src: Ipv4Addr, dst: Ipv4Addr, payload: usize) -> Vec<u8> {
    let mut f = udp_v4(src, dst, payload);
    f[14] = 0x46;
    let total = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    // A no-op option word after the 20-byte header.
    f.splice(34..34, [1, 1, 1, 0]);
    f
}
