//! The hourly series every model reads: one optional value per hour, gaps
//! kept as gaps, bounded in length.

use crate::clock::Hour;
use crate::{Error, Result};

/// The longest series accepted: five years of hours. Longer inputs are
/// refused rather than allocated (a typo in one timestamp can otherwise
/// ask for millions of empty hours).
pub const MAX_HOURS: usize = 5 * 366 * 24;

/// How the observations that fall in one hour become its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aggregation {
    /// The mean (for levels: nodes running, GPUs busy, a price).
    #[default]
    Mean,
    /// The sum (for flows: spend, jobs started). A fall-back hour of a
    /// local clock holds two hours of the flow.
    Sum,
    /// The largest value (for peak demand).
    Max,
}

/// An hourly series: the value of each hour from [`Series::start`] on, or
/// `None` for an hour without data.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    start: Hour,
    values: Vec<Option<f64>>,
}

impl Series {
    /// A series of consecutive hours from `start`; `None` marks a gap.
    /// Values must be finite and the length at most [`MAX_HOURS`].
    pub fn new(start: Hour, values: Vec<Option<f64>>) -> Result<Self> {
        if values.len() > MAX_HOURS {
            return Err(Error::TooLong {
                hours: values.len(),
            });
        }
        if values.iter().flatten().any(|v| !v.is_finite()) {
            return Err(Error::NotFinite);
        }
        Ok(Series { start, values })
    }

    /// Buckets observations (seconds on the file's clock, value) into
    /// hours with `agg`. Hours between the first and the last observation
    /// that have none are gaps. The order of the observations does not
    /// matter.
    pub fn from_observations(
        observations: impl IntoIterator<Item = (i64, f64)>,
        agg: Aggregation,
    ) -> Result<Self> {
        let mut per_hour: std::collections::BTreeMap<Hour, (f64, usize)> =
            std::collections::BTreeMap::new();
        for (seconds, value) in observations {
            if !value.is_finite() {
                return Err(Error::NotFinite);
            }
            let slot = per_hour.entry(Hour::containing(seconds)).or_insert((
                match agg {
                    Aggregation::Max => f64::NEG_INFINITY,
                    _ => 0.0,
                },
                0,
            ));
            slot.0 = match agg {
                Aggregation::Max => slot.0.max(value),
                _ => slot.0 + value,
            };
            slot.1 += 1;
            // Checked as we go so a bad file cannot grow the map unbounded.
            if per_hour.len() > MAX_HOURS {
                return Err(Error::TooLong {
                    hours: per_hour.len(),
                });
            }
        }
        let (Some((&first, _)), Some((&last, _))) =
            (per_hour.first_key_value(), per_hour.last_key_value())
        else {
            return Err(Error::Empty);
        };
        let span = usize::try_from(last.since(first))
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        if span > MAX_HOURS {
            return Err(Error::TooLong { hours: span });
        }
        let mut values = vec![None; span];
        for (hour, (acc, n)) in per_hour {
            let value = match agg {
                Aggregation::Mean => acc / n as f64,
                _ => acc,
            };
            if let Some(slot) = usize::try_from(hour.since(first))
                .ok()
                .and_then(|i| values.get_mut(i))
            {
                *slot = Some(value);
            }
        }
        Series::new(first, values)
    }

    /// The first hour.
    pub fn start(&self) -> Hour {
        self.start
    }

    /// The hour after the last one.
    pub fn end(&self) -> Hour {
        self.start.plus(self.values.len() as i64)
    }

    /// Number of hours, gaps included.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when the series has no hours.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Hours with a value.
    pub fn observed(&self) -> usize {
        self.values.iter().flatten().count()
    }

    /// The values hour by hour, `None` for gaps.
    pub fn values(&self) -> &[Option<f64>] {
        &self.values
    }

    /// The value at `hour` (`None` for a gap or an hour outside).
    pub fn get(&self, hour: Hour) -> Option<f64> {
        let i = usize::try_from(hour.since(self.start)).ok()?;
        self.values.get(i).copied().flatten()
    }

    /// The hours before `end` (exclusive): what a forecaster standing at
    /// `end` may know. Empty when `end` is at or before the start.
    pub fn until(&self, end: Hour) -> Series {
        let n = usize::try_from(end.since(self.start))
            .unwrap_or(0)
            .min(self.values.len());
        Series {
            start: self.start,
            values: self.values.get(..n).unwrap_or_default().to_vec(),
        }
    }

    /// The values with gaps filled, for models that need every hour. A
    /// gap takes the value of the same hour a day earlier when there is
    /// one (a long outage is then shaped like a day), otherwise the
    /// straight line between its neighbours (or the nearest neighbour at
    /// an edge). Uses nothing outside this series, so filling a series cut
    /// with [`Series::until`] never looks past the cut. Leading gaps are
    /// filled from the first observation; an all-gap series gives zeros.
    pub fn filled(&self) -> Vec<f64> {
        let n = self.values.len();
        let mut out: Vec<f64> = Vec::with_capacity(n);
        let mut i = 0;
        while i < n {
            match self.values.get(i).copied().flatten() {
                Some(v) => {
                    out.push(v);
                    i += 1;
                }
                None => {
                    let gap_end = (i..n)
                        .find(|&j| self.values.get(j).copied().flatten().is_some())
                        .unwrap_or(n);
                    let before = i.checked_sub(1).and_then(|j| out.get(j).copied());
                    let after = self.values.get(gap_end).copied().flatten();
                    for j in i..gap_end {
                        let day_ago = j.checked_sub(24).and_then(|k| out.get(k).copied());
                        let v = match (day_ago, before, after) {
                            (Some(d), _, _) => d,
                            (None, Some(b), Some(a)) => {
                                let w = (j + 1 - i) as f64 / (gap_end + 1 - i) as f64;
                                b + (a - b) * w
                            }
                            (None, Some(b), None) => b,
                            (None, None, Some(a)) => a,
                            (None, None, None) => 0.0,
                        };
                        out.push(v);
                    }
                    i = gap_end;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::parse_timestamp;

    fn obs(rows: &[(&str, f64)]) -> Vec<(i64, f64)> {
        rows.iter()
            .map(|(t, v)| (parse_timestamp(t).unwrap(), *v))
            .collect()
    }

    #[test]
    fn buckets_by_hour_with_each_aggregation() {
        let rows = obs(&[
            ("2024-01-01 00:10:00", 2.0),
            ("2024-01-01 00:50:00", 4.0),
            ("2024-01-01 01:00:00", 7.0),
        ]);
        let mean = Series::from_observations(rows.clone(), Aggregation::Mean).unwrap();
        assert_eq!(mean.values(), &[Some(3.0), Some(7.0)]);
        let sum = Series::from_observations(rows.clone(), Aggregation::Sum).unwrap();
        assert_eq!(sum.values(), &[Some(6.0), Some(7.0)]);
        let max = Series::from_observations(rows, Aggregation::Max).unwrap();
        assert_eq!(max.values(), &[Some(4.0), Some(7.0)]);
        assert_eq!(max.start().to_string(), "2024-01-01 00:00");
    }

    #[test]
    fn hours_without_rows_are_gaps_and_are_filled_from_the_day_before() {
        let mut rows = Vec::new();
        for h in 0..48 {
            // Hours 30..=33 of the second day are missing.
            if (30..=33).contains(&h) {
                continue;
            }
            rows.push((h * 3_600, 100.0 + (h % 24) as f64));
        }
        let s = Series::from_observations(rows, Aggregation::Mean).unwrap();
        assert_eq!(s.len(), 48);
        assert_eq!(s.observed(), 44);
        assert_eq!(s.get(Hour(31)), None);
        let filled = s.filled();
        assert_eq!(filled[31], 107.0, "same hour the day before");
        assert_eq!(filled[29], 105.0);
    }

    #[test]
    fn a_gap_without_a_day_before_is_a_straight_line() {
        let s = Series::new(Hour(0), vec![Some(10.0), None, None, None, Some(50.0)]).unwrap();
        assert_eq!(s.filled(), vec![10.0, 20.0, 30.0, 40.0, 50.0]);
        let cut = s.until(Hour(3));
        assert_eq!(
            cut.filled(),
            vec![10.0, 10.0, 10.0],
            "filling a cut series must not see the value after the cut"
        );
    }

    #[test]
    fn daylight_saving_duplicate_and_missing_hours() {
        // US fall-back night in local time: 01:00-01:59 happens twice.
        let mut rows = obs(&[
            ("2017-11-05 00:30:00", 300.0),
            ("2017-11-05 01:30:00", 310.0),
            ("2017-11-05 01:30:00", 330.0),
            ("2017-11-05 02:30:00", 305.0),
        ]);
        let mean = Series::from_observations(rows.clone(), Aggregation::Mean).unwrap();
        assert_eq!(mean.values(), &[Some(300.0), Some(320.0), Some(305.0)]);
        let sum = Series::from_observations(rows.clone(), Aggregation::Sum).unwrap();
        assert_eq!(
            sum.get(Hour::parse("2017-11-05 01:00:00").unwrap()),
            Some(640.0)
        );

        // Spring-forward night: 02:00-02:59 never happens: one gap hour.
        rows = obs(&[
            ("2018-03-11 01:30:00", 300.0),
            ("2018-03-11 03:30:00", 320.0),
        ]);
        let s = Series::from_observations(rows, Aggregation::Mean).unwrap();
        assert_eq!(s.values(), &[Some(300.0), None, Some(320.0)]);
        assert_eq!(s.filled(), vec![300.0, 310.0, 320.0]);
    }

    #[test]
    fn refuses_empty_too_long_and_non_finite_input() {
        assert!(matches!(
            Series::from_observations(Vec::new(), Aggregation::Mean),
            Err(Error::Empty)
        ));
        let far = (MAX_HOURS as i64 + 1) * 3_600;
        assert!(matches!(
            Series::from_observations(vec![(0, 1.0), (far, 1.0)], Aggregation::Mean),
            Err(Error::TooLong { .. })
        ));
        assert!(matches!(
            Series::from_observations(vec![(0, f64::NAN)], Aggregation::Mean),
            Err(Error::NotFinite)
        ));
    }
}
