//! The two classes of traffic bwmon tells apart.

/// General traffic, or traffic to the exempt prefixes (historically Internet2, "i2").
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TrafficClass {
    /// Destinations outside the exempt prefixes.
    General,
    /// Destinations inside the exempt prefixes.
    Exempt,
}

impl TrafficClass {
    /// Both classes, for loops that treat them alike.
    pub const ALL: [TrafficClass; 2] = [TrafficClass::General, TrafficClass::Exempt];

    /// The name used in mail, metrics and JSON: "general" or "exempt".
    pub const fn name(self) -> &'static str {
        match self {
            TrafficClass::General => "general",
            TrafficClass::Exempt => "exempt",
        }
    }
}
