//! A typo frees no capped slice: a broken `[[slice]]` entry that still names its slice (by
//! name, else xid) keeps that slice's last good definition in force, in the entry's place.

use std::collections::HashSet;

use ipnet::IpNet;

use super::slices::{Parsed, SliceSpec};

/// The entry a problem's key (`slice[3].net_max_rate`) is about.
pub(crate) fn entry_of(key: &str) -> Option<usize> {
    key.strip_prefix("slice[")?.split_once(']')?.0.parse().ok()
}

/// The slices to apply: `parsed`'s, and for each broken entry the last good definition of its
/// slice from `previous` (found by the entry's name, else its xid, though the entry is broken),
/// in the entry's place — unless a usable slice now has that name, xid or a source of it.
/// Also the broken entries whose slice is kept, with its name. A slice whose entry is gone is
/// not kept: it departs.
pub(crate) fn keep_last_good(
    parsed: &Parsed,
    previous: &[SliceSpec],
) -> (Vec<SliceSpec>, Vec<(usize, String)>) {
    let names: HashSet<&str> = parsed.slices.iter().map(|s| s.name.as_str()).collect();
    let xids: HashSet<u32> = parsed.slices.iter().map(|s| s.xid).collect();
    let sources: HashSet<IpNet> = parsed
        .slices
        .iter()
        .flat_map(|s| s.sources.iter().copied())
        .collect();
    let mut kept_names: HashSet<&str> = HashSet::new();
    let mut kept: Vec<(usize, &SliceSpec)> = Vec::new();
    let mut said = Vec::new();
    for b in &parsed.broken {
        let found = match (&b.name, b.xid) {
            (Some(name), _) => previous.iter().find(|s| &s.name == name),
            (None, Some(xid)) => previous.iter().find(|s| s.xid == xid),
            (None, None) => None,
        };
        let Some(old) = found else { continue };
        let clash = names.contains(old.name.as_str())
            || xids.contains(&old.xid)
            || old.sources.iter().any(|p| sources.contains(p))
            || !kept_names.insert(old.name.as_str());
        if clash {
            continue;
        }
        kept.push((b.at, old));
        said.push((b.index, old.name.clone()));
    }
    let mut out = Vec::with_capacity(parsed.slices.len() + kept.len());
    let mut kept = kept.into_iter().peekable();
    for (i, s) in parsed.slices.iter().enumerate() {
        while let Some((_, old)) = kept.next_if(|(at, _)| *at <= i) {
            out.push(old.clone());
        }
        out.push(s.clone());
    }
    out.extend(kept.map(|(_, old)| old.clone()));
    (out, said)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::slices::parse;

    const PATH: &str = "/etc/bwmon/slices.toml";

    #[test]
    fn a_broken_entry_keeps_its_slices_last_good_definition_by_name_or_xid() {
        let good = parse(
            Path::new(PATH),
            "[[slice]]\nname = \"alice\"\nxid = 1001\nnet_max_rate = 7\n[[slice]]\nname = \"bob\"\nxid = 1002\n[[slice]]\nname = \"carol\"\nxid = 1003\n[[slice]]\nname = \"dave\"\nxid = 1004\n",
        )
        .unwrap()
        .slices;
        // alice: a typo in a value; bob: a typo in his name (found by xid); carol: gone; dave:
        // a typo, and a new slice took his xid.
        let parsed = parse(
            Path::new(PATH),
            "[[slice]]\nname = \"alice\"\nxid = 1001\nnet_max_rate = \"7kbit/s\"\n[[slice]]\nname = \"b ob\"\nxid = 1002\n[[slice]]\nname = \"dave\"\nxid = \"x\"\n[[slice]]\nname = \"erin\"\nxid = 1004\n",
        )
        .unwrap();
        assert_eq!(parsed.broken.len(), 3);
        let (slices, kept) = keep_last_good(&parsed, &good);
        let names: Vec<&str> = slices.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "erin"], "in the file's order");
        assert_eq!(slices[0], good[0], "alice's last good limits");
        assert_eq!(kept, [(0, "alice".to_owned()), (1, "bob".to_owned())]);
        let problems = parsed.skipped.unwrap();
        let entries: Vec<Option<usize>> =
            problems.problems.iter().map(|p| entry_of(&p.key)).collect();
        assert_eq!(entries, [Some(0), Some(1), Some(2)]);
        // Without a last good definition (a first start), a broken entry is skipped.
        let (slices, kept) = keep_last_good(
            &parse(
                Path::new(PATH),
                "[[slice]]\nname = \"alice\"\nxid = \"x\"\n",
            )
            .unwrap(),
            &[],
        );
        assert!(slices.is_empty() && kept.is_empty());
    }
}
