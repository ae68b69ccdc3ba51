//! The two classes of traffic bwmon tells apart, and the pair type that carries one value of
//! each: general and exempt travel together as one [`PerClass`], never as a hand-written tuple.

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
    pub(crate) const fn name(self) -> &'static str {
        match self {
            TrafficClass::General => "general",
            TrafficClass::Exempt => "exempt",
        }
    }
}

/// One value per traffic class.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct PerClass<T> {
    /// General traffic's.
    pub general: T,
    /// Exempt traffic's.
    pub exempt: T,
}

impl<T> PerClass<T> {
    /// A pair from a value per class.
    pub(crate) fn from_fn(mut f: impl FnMut(TrafficClass) -> T) -> Self {
        PerClass {
            general: f(TrafficClass::General),
            exempt: f(TrafficClass::Exempt),
        }
    }

    /// The value of `class`.
    pub(crate) fn of(&self, class: TrafficClass) -> &T {
        match class {
            TrafficClass::General => &self.general,
            TrafficClass::Exempt => &self.exempt,
        }
    }

    /// The value of `class`, to change.
    pub(crate) fn of_mut(&mut self, class: TrafficClass) -> &mut T {
        match class {
            TrafficClass::General => &mut self.general,
            TrafficClass::Exempt => &mut self.exempt,
        }
    }

    /// Both values transformed, class by class.
    pub(crate) fn map<U>(self, mut f: impl FnMut(TrafficClass, T) -> U) -> PerClass<U> {
        PerClass {
            general: f(TrafficClass::General, self.general),
            exempt: f(TrafficClass::Exempt, self.exempt),
        }
    }

    /// `(class, &value)` for both classes, general first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (TrafficClass, &T)> {
        [
            (TrafficClass::General, &self.general),
            (TrafficClass::Exempt, &self.exempt),
        ]
        .into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_addressed_by_class_and_mapped_in_class_order() {
        let mut p = PerClass::from_fn(|c| c.name().len());
        assert_eq!((p.general, p.exempt), (7, 6));
        *p.of_mut(TrafficClass::Exempt) += 1;
        assert_eq!(*p.of(TrafficClass::Exempt), 7);
        let names: Vec<_> = p
            .map(|c, n| format!("{}={n}", c.name()))
            .iter()
            .map(|(_, s)| s.clone())
            .collect();
        assert_eq!(names, ["general=7", "exempt=7"]);
    }
}
