//! HTB's netlink options, typed: `tc_htb_glob` for the qdisc, `tc_htb_opt` (with its two
//! `tc_ratespec`s) and the 64-bit rate attributes for classes, and the psched clock that turns
//! burst sizes into the kernel's ticks the way iproute2 does. No crate carries these.

use crate::units::BitsPerSec;

/// `TCA_HTB_PARMS`
pub(crate) const TCA_HTB_PARMS: u16 = 1;
/// `TCA_HTB_INIT`
pub(crate) const TCA_HTB_INIT: u16 = 2;
/// `TCA_HTB_RATE64`
pub(crate) const TCA_HTB_RATE64: u16 = 6;
/// `TCA_HTB_CEIL64`
pub(crate) const TCA_HTB_CEIL64: u16 = 7;

/// `TC_LINKLAYER_ETHERNET`
const LINKLAYER_ETHERNET: u8 = 1;
/// iproute2's default MTU for HTB's rate tables and bursts.
pub(crate) const HTB_MTU: u32 = 1600;
/// The largest GSO packet a class must be able to send at once.
pub(crate) const GSO_MAX_BYTES: u64 = 64 << 10;
/// How late the kernel's HTB watchdog may fire (hrtimer slack and scheduling): the burst a
/// class needs to keep its rate when it is woken that late.
pub(crate) const TIMER_SLACK_NS: u64 = 1_000_000;
/// Rates at or above this many bytes/s do not fit `tc_ratespec.rate` (about 34.4 Gbit/s).
const RATE32_LIMIT: u64 = 1 << 32;

/// The kernel's packet-scheduler clock, from `/proc/net/psched`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Psched {
    /// Scheduler ticks per microsecond.
    pub(crate) ticks_per_usec: f64,
}

/// `/proc/net/psched` could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum PschedError {
    /// The file cannot be read.
    #[error("reading /proc/net/psched")]
    Read(#[source] std::io::Error),
    /// Its text is not what iproute2 reads either.
    #[error("/proc/net/psched {text:?}: {why}")]
    Malformed {
        /// The file's text.
        text: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl Psched {
    /// Parses `/proc/net/psched` ("t2us us2t clock_res hz", hexadecimal) as iproute2's
    /// `tc_core_init` does.
    ///
    /// # Errors
    /// The text is not four hexadecimal numbers.
    pub(crate) fn parse(text: &str) -> Result<Self, PschedError> {
        let malformed = |why| PschedError::Malformed {
            text: text.to_owned(),
            why,
        };
        let nums: Vec<u64> = text
            .split_whitespace()
            .map(|w| u64::from_str_radix(w, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| malformed("not hexadecimal numbers"))?;
        let [t2us, us2t, clock_res, _hz] = nums[..] else {
            return Err(malformed("expected four numbers"));
        };
        if us2t == 0 || t2us == 0 {
            return Err(malformed("zero clock ratio"));
        }
        // iproute2's compatibility hack for nanosecond clocks.
        let t2us = if clock_res == 1_000_000_000 {
            us2t
        } else {
            t2us
        };
        let clock_factor = clock_res as f64 / 1_000_000.0;
        Ok(Psched {
            ticks_per_usec: t2us as f64 / us2t as f64 * clock_factor,
        })
    }

    /// Reads the running kernel's clock.
    ///
    /// # Errors
    /// The file is missing or malformed.
    pub(crate) fn from_kernel() -> Result<Self, PschedError> {
        let text = std::fs::read_to_string("/proc/net/psched").map_err(PschedError::Read)?;
        Self::parse(&text)
    }

    /// The token bucket bwmon gives a class of `rate`: what the rate sends in
    /// [`TIMER_SLACK_NS`] plus one GSO packet, so a class at any rate can send a whole GSO
    /// packet without going into debt, and a fast class is not held to one packet per timer
    /// event (iproute2's default is one MTU plus a tick's worth: at 100 Gbit/s, 1,612 bytes).
    /// In scheduler ticks, as `tc_htb_opt` carries it; never zero.
    pub(crate) fn buffer_ticks(&self, rate: BitsPerSec) -> u32 {
        let bytes = u128::from(rate.bytes_per_sec()) * u128::from(TIMER_SLACK_NS) / 1_000_000_000;
        let size = u64::try_from(bytes)
            .unwrap_or(u64::MAX)
            .saturating_add(GSO_MAX_BYTES);
        let usecs = 1_000_000.0 * size as f64 / rate.bytes_per_sec().max(1) as f64;
        (usecs * self.ticks_per_usec).clamp(1.0, f64::from(u32::MAX)) as u32
    }
}

/// `struct tc_ratespec` (12 bytes).
fn ratespec(rate: BitsPerSec) -> [u8; 12] {
    let bps = rate.bytes_per_sec();
    let mut out = [0u8; 12];
    // cell_log: iproute2 picks the smallest with mtu >> cell_log <= 255.
    let mut cell_log = 0u8;
    while (HTB_MTU >> cell_log) > 255 {
        cell_log += 1;
    }
    out[0] = cell_log;
    out[1] = LINKLAYER_ETHERNET;
    // overhead (u16) = 0, cell_align (i16) = -1, mpu (u16) = 0
    out[4..6].copy_from_slice(&(-1i16).to_ne_bytes());
    let rate32 = if bps >= RATE32_LIMIT {
        u32::MAX
    } else {
        bps as u32
    };
    out[8..12].copy_from_slice(&rate32.to_ne_bytes());
    out
}

/// The parameters of one HTB class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassParams {
    /// Guaranteed rate.
    pub rate: BitsPerSec,
    /// Ceiling.
    pub ceil: BitsPerSec,
    /// Bytes a class may send per round when borrowing (its share).
    pub quantum: u32,
}

impl ClassParams {
    /// Equal as the kernel stores them: HTB keeps rates in whole bytes per second, so two
    /// rates that differ below 8 bit/s are the same class (and need no change).
    pub fn same_in_kernel(&self, other: &ClassParams) -> bool {
        self.rate.bytes_per_sec() == other.rate.bytes_per_sec()
            && self.ceil.bytes_per_sec() == other.ceil.bytes_per_sec()
            && self.quantum == other.quantum
    }
}

/// The `TCA_OPTIONS` attributes of an HTB class: `(type, payload)` pairs.
pub(crate) fn class_options(p: &ClassParams, clock: &Psched) -> Vec<(u16, Vec<u8>)> {
    let buffer = clock.buffer_ticks(p.rate);
    let cbuffer = clock.buffer_ticks(p.ceil);
    let mut opt = Vec::with_capacity(44);
    opt.extend_from_slice(&ratespec(p.rate));
    opt.extend_from_slice(&ratespec(p.ceil));
    opt.extend_from_slice(&buffer.to_ne_bytes());
    opt.extend_from_slice(&cbuffer.to_ne_bytes());
    opt.extend_from_slice(&p.quantum.to_ne_bytes());
    opt.extend_from_slice(&0u32.to_ne_bytes()); // level (ignored on input)
    opt.extend_from_slice(&0u32.to_ne_bytes()); // prio
    let mut attrs = vec![(TCA_HTB_PARMS, opt)];
    if p.rate.bytes_per_sec() >= RATE32_LIMIT {
        attrs.push((
            TCA_HTB_RATE64,
            p.rate.bytes_per_sec().to_ne_bytes().to_vec(),
        ));
    }
    if p.ceil.bytes_per_sec() >= RATE32_LIMIT {
        attrs.push((
            TCA_HTB_CEIL64,
            p.ceil.bytes_per_sec().to_ne_bytes().to_vec(),
        ));
    }
    attrs
}

/// The `TCA_OPTIONS` attributes of the root HTB qdisc with default class `defcls`.
pub(crate) fn qdisc_options(defcls: u32) -> Vec<(u16, Vec<u8>)> {
    let mut glob = Vec::with_capacity(20);
    glob.extend_from_slice(&3u32.to_ne_bytes()); // version
    glob.extend_from_slice(&10u32.to_ne_bytes()); // rate2quantum (quanta are explicit)
    glob.extend_from_slice(&defcls.to_ne_bytes());
    glob.extend_from_slice(&0u32.to_ne_bytes()); // debug
    glob.extend_from_slice(&0u32.to_ne_bytes()); // direct_pkts
    vec![(TCA_HTB_INIT, glob)]
}

/// Splits a buffer of netlink attributes into `(type, payload)` pairs; stops at the first
/// malformed one.
pub(crate) fn parse_nested(mut buf: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((kind, buf[4..len].to_vec()));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

/// Rate, ceil and quantum of a class, decoded from its dumped `TCA_OPTIONS`.
pub(crate) fn parse_class_options(attrs: &[(u16, Vec<u8>)]) -> Option<ClassParams> {
    let parms = attrs
        .iter()
        .find(|(k, _)| *k == TCA_HTB_PARMS)?
        .1
        .as_slice();
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let u64_attr = |kind: u16| {
        attrs
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, v)| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)))
    };
    let rate = u64_attr(TCA_HTB_RATE64).unwrap_or(u64::from(u32_at(parms, 8)?));
    let ceil = u64_attr(TCA_HTB_CEIL64).unwrap_or(u64::from(u32_at(parms, 20)?));
    Some(ClassParams {
        rate: BitsPerSec(rate.saturating_mul(8)),
        ceil: BitsPerSec(ceil.saturating_mul(8)),
        quantum: u32_at(parms, 32)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PSCHED: &str = "000003e8 00000040 000f4240 3b9aca00";

    /// Ticks to send `size` bytes at `rate` (iproute2's `tc_calc_xmittime`): what `tc` gives a
    /// class by default, to compare ours with.
    fn xmittime(p: &Psched, rate: BitsPerSec, size: u32) -> u32 {
        let usecs = 1_000_000.0 * f64::from(size) / rate.bytes_per_sec().max(1) as f64;
        (usecs * p.ticks_per_usec).min(f64::from(u32::MAX)) as u32
    }

    #[test]
    fn a_tick_conversion_matches_tc() {
        // `tc class add ... htb rate 1mbit` shows buffer 200000 ticks for its 1600-byte burst.
        let p = Psched::parse(PSCHED).unwrap();
        assert_eq!(xmittime(&p, BitsPerSec(1_000_000), 1600), 200_000);
    }

    #[test]
    fn psched_parses_like_iproute2() {
        let p = Psched::parse(PSCHED).unwrap();
        assert_eq!(p.ticks_per_usec, 15.625);
        assert!(Psched::parse("zz").is_err());
        assert!(Psched::parse("1 2 3").is_err());
        assert!(Psched::parse("0 0 0 0").is_err());
    }

    #[test]
    fn buckets_hold_a_gso_packet_and_a_millisecond_at_any_rate() {
        let p = Psched::parse(PSCHED).unwrap();
        for bits in [
            1_000u64,
            1_000_000,
            1_000_000_000,
            100_000_000_000,
            u64::MAX / 2,
        ] {
            let rate = BitsPerSec(bits);
            let ticks = p.buffer_ticks(rate);
            assert!(ticks > 0, "{rate}");
            // Back to bytes: what the rate sends in the buffer's time.
            let usecs = f64::from(ticks) / p.ticks_per_usec;
            let bytes = usecs * rate.bytes_per_sec() as f64 / 1e6;
            let want = (bits / 8 / 1000 + GSO_MAX_BYTES) as f64;
            if ticks < u32::MAX {
                assert!(
                    (bytes - want).abs() / want < 0.01,
                    "{rate}: {bytes} bytes, want {want}"
                );
            }
        }
        // 100 Gbit/s: 12.5 MB a millisecond plus 64 KiB, not iproute2's 1,612 bytes.
        let fast = p.buffer_ticks(BitsPerSec(100_000_000_000));
        assert!(fast > 100 * xmittime(&p, BitsPerSec(100_000_000_000), 1612));
    }

    #[test]
    fn options_round_trip_including_64_bit_rates() {
        let p = Psched::parse(PSCHED).unwrap();
        for (rate, ceil) in [
            (1_000, 100_000_000),
            (1_500_000, 1_000_000_000),
            (40_000_000_000, 100_000_000_000),
        ] {
            let params = ClassParams {
                rate: BitsPerSec(rate),
                ceil: BitsPerSec(ceil),
                quantum: 3200,
            };
            let attrs = class_options(&params, &p);
            assert_eq!(attrs[0].1.len(), 44);
            assert_eq!(
                attrs.len(),
                1 + usize::from(rate / 8 >= 1 << 32) + usize::from(ceil / 8 >= 1 << 32)
            );
            assert_eq!(parse_class_options(&attrs), Some(params));
            // Through the nested encoding the kernel uses.
            let mut nested = Vec::new();
            for (kind, value) in &attrs {
                nested.extend_from_slice(&((value.len() + 4) as u16).to_ne_bytes());
                nested.extend_from_slice(&kind.to_ne_bytes());
                nested.extend_from_slice(value);
                nested.resize(nested.len().next_multiple_of(4), 0);
            }
            assert_eq!(parse_class_options(&parse_nested(&nested)), Some(params));
        }
    }

    #[test]
    fn params_compare_at_the_kernels_precision() {
        let p = |rate, ceil, quantum| ClassParams {
            rate: BitsPerSec(rate),
            ceil: BitsPerSec(ceil),
            quantum,
        };
        assert!(p(1000, 1_823_457, 1600).same_in_kernel(&p(1000, 1_823_456, 1600)));
        assert!(!p(1000, 1_823_464, 1600).same_in_kernel(&p(1000, 1_823_456, 1600)));
        assert!(!p(1000, 8000, 1600).same_in_kernel(&p(1000, 8000, 3200)));
    }

    #[test]
    fn malformed_nested_attributes_stop_parsing_without_panic() {
        assert!(parse_nested(&[]).is_empty());
        assert!(parse_nested(&[200, 0, 1, 0, 1, 2]).is_empty());
        assert!(parse_nested(&[2, 0, 1, 0]).is_empty());
        assert_eq!(parse_nested(&[5, 0, 1, 0, 9]), vec![(1, vec![9])]);
        assert_eq!(parse_class_options(&[(TCA_HTB_PARMS, vec![0; 10])]), None);
    }
}
