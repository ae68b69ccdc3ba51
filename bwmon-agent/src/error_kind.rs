//! What kind of thing failed, for `bwmon_errors_total{kind}` and the status report's error
//! counts: one list that the sync, the daemon, metrics and status all use.

use std::collections::BTreeMap;

/// A kind of failure the daemon counts and retries.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ErrorKind {
    /// The eBPF programs or maps.
    Datapath,
    /// The HTB tree.
    Htb,
    /// The slices file.
    Slices,
    /// A configuration reload.
    Config,
    /// Saving the state.
    State,
    /// Writing or compacting the history.
    History,
    /// Delivering a notice.
    Notify,
    /// No HTB minors left for a slice.
    Minors,
}

impl ErrorKind {
    /// Every kind, in the order metrics list them.
    pub(crate) const ALL: [ErrorKind; 8] = [
        ErrorKind::Datapath,
        ErrorKind::Htb,
        ErrorKind::Slices,
        ErrorKind::Config,
        ErrorKind::State,
        ErrorKind::History,
        ErrorKind::Notify,
        ErrorKind::Minors,
    ];

    /// The label value: "datapath", "htb", …
    pub(crate) const fn name(self) -> &'static str {
        match self {
            ErrorKind::Datapath => "datapath",
            ErrorKind::Htb => "htb",
            ErrorKind::Slices => "slices",
            ErrorKind::Config => "config",
            ErrorKind::State => "state",
            ErrorKind::History => "history",
            ErrorKind::Notify => "notify",
            ErrorKind::Minors => "minors",
        }
    }
}

/// Errors counted by kind since start.
pub(crate) type ErrorCounts = BTreeMap<ErrorKind, u64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once_under_its_serialized_name() {
        let names: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for kind in ErrorKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
        }
        assert!(names.contains(&"history"));
    }
}
