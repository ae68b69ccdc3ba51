//! `tc` as an independent witness: class stats parsed from its output, and fixtures built
//! with it.

use std::{process::Output, thread, time::Duration};

use crate::*;

/// Counters of one HTB class as `tc -s` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcClassStats {
    /// Bytes sent (dequeued).
    pub bytes: u64,
    /// Packets sent.
    pub packets: u64,
    /// Packets dropped.
    pub drops: u64,
    /// Packets queued right now.
    pub qlen: u64,
    /// Rate in bit/s as tc prints it (rounded to its unit).
    pub rate: u64,
    /// Ceil in bit/s as tc prints it.
    pub ceil: u64,
    /// Quantum in bytes.
    pub quantum: u64,
    /// Parent handle, e.g. "1:10".
    pub parent: Option<(u32, u32)>,
}

/// Parses tc's rate text ("1Mbit", "10Gbit", "64bit", "1500Kbit") into bit/s.
pub fn parse_tc_size(s: &str) -> Option<u64> {
    // "1600b/1": the size, then the cell.
    let s = s.split('/').next()?;
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = s.split_at(split);
    let mult: f64 = match unit {
        "b" => 1.0,
        "Kb" => 1024.0,
        "Mb" => 1024.0 * 1024.0,
        "Gb" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((num.parse::<f64>().ok()? * mult) as u64)
}

/// A tc rate ("1Kbit", "100Mbit", "40Gbit") in bit/s.
pub fn parse_tc_rate(s: &str) -> Option<u64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult = match unit {
        "bit" => 1.0,
        "Kbit" => 1e3,
        "Mbit" => 1e6,
        "Gbit" => 1e9,
        "Tbit" => 1e12,
        _ => return None,
    };
    Some((num * mult).round() as u64)
}

/// Parses the text of `tc -s -d class show` into stats per handle.
pub fn parse_tc_classes(text: &str) -> std::collections::HashMap<(u32, u32), TcClassStats> {
    let mut map = std::collections::HashMap::new();
    let mut current: Option<((u32, u32), TcClassStats)> = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
        };
        if words.first() == Some(&"class") {
            if let Some((h, st)) = current.take() {
                map.insert(h, st);
            }
            let handle = words
                .get(2)
                .and_then(|h| parse_handle(h))
                .expect("class handle");
            let st = TcClassStats {
                rate: after("rate").and_then(|r| parse_tc_rate(r)).unwrap_or(0),
                ceil: after("ceil").and_then(|r| parse_tc_rate(r)).unwrap_or(0),
                quantum: after("quantum").and_then(|q| q.parse().ok()).unwrap_or(0),
                parent: after("parent").and_then(|p| parse_handle(p)),
                ..Default::default()
            };
            current = Some((handle, st));
        } else if let Some((_, st)) = current.as_mut() {
            if words.first() == Some(&"Sent") {
                st.bytes = words.get(1).and_then(|b| b.parse().ok()).unwrap_or(0);
                st.packets = words.get(3).and_then(|b| b.parse().ok()).unwrap_or(0);
                st.drops = after("(dropped")
                    .and_then(|d| d.trim_end_matches(',').parse().ok())
                    .unwrap_or(0);
            } else if words.first() == Some(&"backlog") {
                st.qlen = words
                    .get(2)
                    .and_then(|p| p.trim_end_matches('p').parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    if let Some((h, st)) = current {
        map.insert(h, st);
    }
    map
}

fn parse_handle(s: &str) -> Option<(u32, u32)> {
    let (maj, min) = s.split_once(':')?;
    let maj = if maj.is_empty() {
        0
    } else {
        u32::from_str_radix(maj, 16).ok()?
    };
    let min = if min.is_empty() {
        0
    } else {
        u32::from_str_radix(min, 16).ok()?
    };
    Some((maj, min))
}

impl Lab {
    /// Runs `tc` with `args` followed by `dev <host_if>` where `{dev}` appears.
    pub fn tc(&self, args: &[&str]) -> Output {
        let args: Vec<&str> = args
            .iter()
            .map(|a| {
                if *a == "{dev}" {
                    self.host_if.as_str()
                } else {
                    a
                }
            })
            .collect();
        cmd("tc", &args)
    }

    /// A plain HTB tree made with `tc` for datapath tests: `1:` (default `1:2`), `1:1` at
    /// 10 gbit, and one leaf per `(minor, rate)` (rate and ceil equal, tc syntax).
    pub fn htb_fixture(&self, leaves: &[(u16, &str)]) {
        // A short device queue so a flood into a slow class overflows it instead of blocking
        // the sender on its socket buffer.
        cmd("ip", &["link", "set", &self.host_if, "txqueuelen", "20"]);
        self.tc(&[
            "qdisc", "add", "dev", "{dev}", "root", "handle", "1:", "htb", "default", "2",
        ]);
        self.tc(&[
            "class", "add", "dev", "{dev}", "parent", "1:", "classid", "1:1", "htb", "rate",
            "10gbit",
        ]);
        for (minor, rate) in [(2u16, "10gbit")].iter().chain(leaves.iter()) {
            let id = format!("1:{minor:x}");
            self.tc(&[
                "class", "add", "dev", "{dev}", "parent", "1:1", "classid", &id, "htb", "rate",
                rate, "ceil", rate,
            ]);
        }
    }

    /// HTB's sent bytes for the class tc writes as `handle` ("1:100"); 0 when it is gone.
    pub fn class_bytes(&self, handle: &str) -> u64 {
        let Some((maj, min)) = handle.split_once(':') else {
            panic!("not a class handle: {handle}");
        };
        let key = (
            u32::from_str_radix(maj, 16).unwrap(),
            u32::from_str_radix(min, 16).unwrap(),
        );
        self.tc_classes().get(&key).map(|c| c.bytes).unwrap_or(0)
    }

    /// Every class on the host interface, by handle, parsed from `tc -s -d class show`
    /// (iproute2 6.1 prints classes only as text).
    pub fn tc_classes(&self) -> std::collections::HashMap<(u32, u32), TcClassStats> {
        let out = self.tc(&["-s", "-d", "class", "show", "dev", "{dev}"]);
        parse_tc_classes(&String::from_utf8_lossy(&out.stdout))
    }

    /// Bytes and packets the root qdisc sent, from `tc -s -j qdisc show`.
    pub fn root_qdisc_sent(&self) -> (u64, u64) {
        let out = self.tc(&["-s", "-j", "qdisc", "show", "dev", "{dev}"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("tc -j output is JSON");
        let root = v
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["root"].as_bool() == Some(true)))
            .expect("a root qdisc");
        (
            root["bytes"].as_u64().unwrap_or(0),
            root["packets"].as_u64().unwrap_or(0),
        )
    }

    /// Waits until no HTB class holds packets (so dequeued counters are final).
    pub fn wait_for_empty_queues(&self) {
        for _ in 0..100 {
            if self.tc_classes().values().all(|c| c.qlen == 0) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("HTB queues on {} did not drain", self.host_if);
    }
}
