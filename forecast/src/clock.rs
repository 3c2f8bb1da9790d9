//! Timestamps on the clock a file was written in: parsing the two accepted
//! formats, and the hour numbers that series are indexed by.
//!
//! A series keeps the wall-clock hour that its file states, offset or not:
//! demand for GPUs follows people's local day, so the same hour yesterday
//! must be the same hour on the clock. The price is daylight saving: in a
//! fall-back night the two 01:00 hours land in one bucket, and in a
//! spring-forward night one hour has no data (a gap).

use std::fmt;

use crate::{Error, Result};

const SECONDS_PER_HOUR: i64 = 3_600;
const SECONDS_PER_DAY: i64 = 86_400;

/// An hour on the series' clock: hours since 1970-01-01 00:00 as written
/// in the data (not necessarily UTC; see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hour(pub i64);

impl Hour {
    /// The hour that contains `seconds` (seconds since 1970-01-01 00:00 on
    /// the same clock).
    pub fn containing(seconds: i64) -> Self {
        Hour(seconds.div_euclid(SECONDS_PER_HOUR))
    }

    /// The hour `n` hours after this one (before it when `n` is negative).
    pub fn plus(self, n: i64) -> Self {
        Hour(self.0.saturating_add(n))
    }

    /// Hours from `earlier` to this hour.
    pub fn since(self, earlier: Hour) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Parses a timestamp (see [`parse_timestamp`]) and takes its hour.
    /// For typing on a command line, `YYYY-MM-DD` (midnight) and
    /// `YYYY-MM-DD HH:MM` are accepted too.
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim();
        let full = match t.len() {
            10 => format!("{t} 00:00:00"),
            16 => format!("{t}:00"),
            _ => t.to_owned(),
        };
        parse_timestamp(&full)
            .map(Hour::containing)
            .map_err(|_| Error::Timestamp(text.to_owned()))
    }
}

impl fmt::Display for Hour {
    /// `YYYY-MM-DD HH:00`, the form the CLI prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.0.saturating_mul(SECONDS_PER_HOUR);
        let days = seconds.div_euclid(SECONDS_PER_DAY);
        let hour = seconds.rem_euclid(SECONDS_PER_DAY) / SECONDS_PER_HOUR;
        let (y, m, d) = civil_from_days(days);
        write!(f, "{y:04}-{m:02}-{d:02} {hour:02}:00")
    }
}

impl serde::Serialize for Hour {
    /// As its text, `YYYY-MM-DD HH:00`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses `YYYY-MM-DD HH:MM:SS` or RFC 3339 (`2017-12-01T13:00:00Z`,
/// `2017-12-01T13:00:00.5+01:00`, a space for the `T` also accepted) into
/// seconds since 1970-01-01 00:00 on the clock as written. Fractions of a
/// second are dropped. An offset, when present, must be well formed but
/// does not move the time (see the module documentation).
pub fn parse_timestamp(text: &str) -> Result<i64> {
    let bad = || Error::Timestamp(text.to_owned());
    let s = text.trim();
    let b = s.as_bytes();
    if b.len() < 19 {
        return Err(bad());
    }
    let sep_ok = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep_ok(4, b'-')
        && sep_ok(7, b'-')
        && matches!(b.get(10), Some(b'T' | b't' | b' '))
        && sep_ok(13, b':')
        && sep_ok(16, b':'))
    {
        return Err(bad());
    }
    let num = |from: usize, to: usize| -> Result<i64> {
        let part = s.get(from..to).ok_or_else(bad)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<i64>().map_err(|_| bad())
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = s.get(19..).ok_or_else(bad)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = frac.get(digits..).ok_or_else(bad)?;
    }
    match rest.as_bytes() {
        [] | [b'Z' | b'z'] => {}
        [b'+' | b'-', h1, h2, b':', m1, m2]
            if [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()) => {}
        _ => return Err(bad()),
    }
    let days = days_from_civil(year, month, day);
    Ok(days * SECONDS_PER_DAY + hour * SECONDS_PER_HOUR + minute * 60 + second.min(59))
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// well-known algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_name_the_same_wall_clock_second() {
        let plain = parse_timestamp("2017-12-01 13:45:10").unwrap();
        assert_eq!(parse_timestamp("2017-12-01T13:45:10Z").unwrap(), plain);
        assert_eq!(parse_timestamp("2017-12-01T13:45:10.250Z").unwrap(), plain);
        assert_eq!(
            parse_timestamp("2017-12-01T13:45:10-05:00").unwrap(),
            plain,
            "the hour written is kept, offset or not"
        );
        // 2017-12-01 is day 17,501 since the epoch.
        assert_eq!(plain, 17_501 * 86_400 + 13 * 3_600 + 45 * 60 + 10);
    }

    #[test]
    fn hours_print_as_dates() {
        let h = Hour::parse("2016-02-29 23:59:59").unwrap();
        assert_eq!(h.to_string(), "2016-02-29 23:00");
        assert_eq!(h.plus(1).to_string(), "2016-03-01 00:00");
        assert_eq!(Hour::parse("1969-12-31 23:30:00").unwrap(), Hour(-1));
        assert_eq!(
            Hour::parse("2017-12-14 23:00").unwrap().to_string(),
            "2017-12-14 23:00"
        );
        assert_eq!(
            Hour::parse("2017-12-01").unwrap().to_string(),
            "2017-12-01 00:00"
        );
        assert!(Hour::parse("2017-12").is_err());
    }

    #[test]
    fn rejects_what_is_not_a_time() {
        for text in [
            "",
            "yesterday",
            "2017-13-01 00:00:00",
            "2017-02-29 00:00:00",
            "2017-12-01 24:00:00",
            "2017-12-01 10:00",
            "2017-12-01T10:00:00+0100",
            "2017-12-01T10:00:00Zjunk",
            "2017/12/01 10:00:00",
            "2017-12-01 1a:00:00",
        ] {
            assert!(parse_timestamp(text).is_err(), "{text:?} parsed");
        }
    }
}
