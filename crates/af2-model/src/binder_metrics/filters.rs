//! The AF2-IG filters that PXDesign applies to the binder metrics: criteria on one metric each,
//! the easy and strict sets, and what a design passed or failed.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use super::BinderMetrics;

/// One field of [`BinderMetrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// [`BinderMetrics::plddt`].
    Plddt,
    /// [`BinderMetrics::pae`].
    Pae,
    /// [`BinderMetrics::i_pae`].
    IPae,
    /// [`BinderMetrics::unscaled_i_pae`].
    UnscaledIPae,
    /// [`BinderMetrics::ptm`].
    Ptm,
    /// [`BinderMetrics::i_ptm`].
    IPtm,
    /// [`BinderMetrics::rmsd`].
    Rmsd,
    /// [`BinderMetrics::bound_unbound_rmsd`].
    BoundUnboundRmsd,
    /// [`BinderMetrics::plddt_monomer`].
    PlddtMonomer,
}

impl Metric {
    /// Every metric, in the order of [`BinderMetrics`]'s fields.
    pub const ALL: [Metric; 9] = [
        Metric::Plddt,
        Metric::Pae,
        Metric::IPae,
        Metric::UnscaledIPae,
        Metric::Ptm,
        Metric::IPtm,
        Metric::Rmsd,
        Metric::BoundUnboundRmsd,
        Metric::PlddtMonomer,
    ];

    /// The field name (also the serialised key).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Plddt => "plddt",
            Metric::Pae => "pae",
            Metric::IPae => "i_pae",
            Metric::UnscaledIPae => "unscaled_i_pae",
            Metric::Ptm => "ptm",
            Metric::IPtm => "i_ptm",
            Metric::Rmsd => "rmsd",
            Metric::BoundUnboundRmsd => "bound_unbound_rmsd",
            Metric::PlddtMonomer => "plddt_monomer",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A strict inequality on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Criterion {
    /// The metric tested.
    pub metric: Metric,
    /// `true`: the metric must exceed `threshold`; `false`: it must be below it.
    pub greater: bool,
    /// The bound (excluded).
    pub threshold: f64,
}

impl Criterion {
    const fn above(metric: Metric, threshold: f64) -> Self {
        Self {
            metric,
            greater: true,
            threshold,
        }
    }

    const fn below(metric: Metric, threshold: f64) -> Self {
        Self {
            metric,
            greater: false,
            threshold,
        }
    }

    /// Whether `value` satisfies the criterion (NaN never does).
    pub fn holds(&self, value: f64) -> bool {
        if self.greater {
            value > self.threshold
        } else {
            value < self.threshold
        }
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.greater { '>' } else { '<' };
        write!(f, "{} {op} {}", self.metric, self.threshold)
    }
}

/// The AF2-IG filters that PXDesign applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// pLDDT > 0.8, i_pTM > 0.5, i_pAE < 0.35, bound/unbound RMSD < 3.5 Å.
    Af2IgEasy,
    /// pLDDT > 0.9, unscaled i_pAE < 7 Å, binder RMSD (prediction vs design) < 1.5 Å.
    Af2IgStrict,
}

const EASY: [Criterion; 4] = [
    Criterion::above(Metric::Plddt, 0.8),
    Criterion::above(Metric::IPtm, 0.5),
    Criterion::below(Metric::IPae, 0.35),
    Criterion::below(Metric::BoundUnboundRmsd, 3.5),
];

const STRICT: [Criterion; 3] = [
    Criterion::above(Metric::Plddt, 0.9),
    Criterion::below(Metric::UnscaledIPae, 7.0),
    Criterion::below(Metric::Rmsd, 1.5),
];

impl Filter {
    /// Both filters.
    pub const ALL: [Filter; 2] = [Filter::Af2IgEasy, Filter::Af2IgStrict];

    /// The filter's name, as used in table columns and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Filter::Af2IgEasy => "af2ig_easy",
            Filter::Af2IgStrict => "af2ig_strict",
        }
    }

    /// The criteria, all of which must hold.
    pub fn criteria(self) -> &'static [Criterion] {
        match self {
            Filter::Af2IgEasy => &EASY,
            Filter::Af2IgStrict => &STRICT,
        }
    }

    /// Tests every criterion; a metric that was not computed fails its criterion.
    pub fn evaluate(self, metrics: &BinderMetrics) -> FilterOutcome {
        let failed: Vec<FailedCriterion> = self
            .criteria()
            .iter()
            .filter_map(|c| {
                let value = metrics.get(c.metric);
                match value {
                    Some(v) if c.holds(v) => None,
                    _ => Some(FailedCriterion {
                        criterion: *c,
                        value,
                    }),
                }
            })
            .collect();
        FilterOutcome {
            filter: self,
            passed: failed.is_empty(),
            failed,
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown filter name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown filter '{0}' (expected af2ig-easy or af2ig-strict)")]
pub struct UnknownFilter(pub String);

impl FromStr for Filter {
    type Err = UnknownFilter;

    /// Accepts `af2ig_easy`, `af2ig-easy`, `AF2-IG-easy`, `easy` (and the same for strict),
    /// case-insensitively.
    fn from_str(s: &str) -> Result<Self, UnknownFilter> {
        let key: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        match key.as_str() {
            "af2igeasy" | "easy" => Ok(Filter::Af2IgEasy),
            "af2igstrict" | "af2ig" | "strict" => Ok(Filter::Af2IgStrict),
            _ => Err(UnknownFilter(s.to_string())),
        }
    }
}

/// A criterion that did not hold, with the value found (`None`: the metric was not computed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FailedCriterion {
    /// The criterion.
    pub criterion: Criterion,
    /// The metric's value.
    pub value: Option<f64>,
}

impl fmt::Display for FailedCriterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value {
            Some(v) => write!(
                f,
                "{} = {v:.4} (needs {})",
                self.criterion.metric, self.criterion
            ),
            None => write!(
                f,
                "{} missing (needs {})",
                self.criterion.metric, self.criterion
            ),
        }
    }
}

/// The verdict of one filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterOutcome {
    /// Which filter.
    pub filter: Filter,
    /// Whether every criterion held.
    pub passed: bool,
    /// The criteria that failed, in the filter's order.
    pub failed: Vec<FailedCriterion>,
}

impl FilterOutcome {
    /// The failed criteria as one line, e.g. `"i_ptm = 0.4200 (needs i_ptm > 0.5); rmsd missing
    /// (needs rmsd < 1.5)"`; empty when the filter passed.
    pub fn reasons(&self) -> String {
        self.failed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}
