//! How the CLI writes amounts, times, durations and ids for people.

use rigmesh_protocol::{Credits, UnixMillis};

/// A duration as `1h 02m 03s`, `4m 05s` or `7s`.
pub(crate) fn duration(ms: u64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// An offset into a lease as `h:mm:ss`.
pub(crate) fn offset(ms: u64) -> String {
    let secs = ms / 1000;
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// A time as `2026-11-26 21:51:16Z` (UTC).
pub(crate) fn utc(t: UnixMillis) -> String {
    let secs = t.0 / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rest = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The first 12 hex digits of an id or key, enough to tell them apart.
pub(crate) fn short(id: &impl std::fmt::Display) -> String {
    id.to_string().chars().take(12).collect()
}

/// `spent` as a percentage of `cap`, to a tenth (`37.5 %`), rounded down.
pub(crate) fn percent(spent: Credits, cap: Credits) -> String {
    if cap.units() <= 0 {
        return "-".into();
    }
    let tenths = i128::from(spent.units()) * 1000 / i128::from(cap.units());
    format!("{}.{} %", tenths / 10, tenths % 10)
}

/// A cap with what is spent and left: `12.5 (37.5 % used, 7.8125 left)`,
/// or `none` without a cap.
pub(crate) fn cap(cap: Option<Credits>, spent: Credits, remaining: Option<Credits>) -> String {
    match cap {
        Some(cap) => format!(
            "{cap} ({} used, {} left)",
            percent(spent, cap),
            remaining.unwrap_or(Credits::ZERO)
        ),
        None => "none".into(),
    }
}

/// An amount above zero, as typed on the command line (prices, budgets,
/// deposits, withdrawals): a zero or negative one is refused before
/// anything is signed or sent.
pub(crate) fn positive_credits(text: &str) -> Result<Credits, String> {
    let amount: Credits = text.trim().parse().map_err(|e| format!("{e}"))?;
    if amount <= Credits::ZERO {
        return Err(format!("{amount} is not above zero"));
    }
    Ok(amount)
}

/// A wait like `90s`, `5m`, `1h` or `1h30m` (a bare number is seconds),
/// in seconds.
pub(crate) fn parse_wait(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not a duration; write e.g. 90s, 5m or 1h");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() {
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = total.checked_add(n).ok_or_else(bad)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_s_numbers() {
        assert_eq!(parse_wait("90s"), Ok(90));
        assert_eq!(parse_wait("5m"), Ok(300));
        assert_eq!(parse_wait("1h"), Ok(3600));
        assert_eq!(parse_wait("1h30m"), Ok(5400));
        assert_eq!(parse_wait("45"), Ok(45));
        for bad in ["", "5x", "m", "1.5h", "-5s"] {
            assert!(parse_wait(bad).is_err(), "{bad}");
        }
        assert_eq!(duration(3_723_000), "1h 02m 03s");
        assert_eq!(duration(65_000), "1m 05s");
        assert_eq!(duration(999), "0s");
        assert_eq!(offset(3_723_000), "1:02:03");
        assert_eq!(utc(UnixMillis(0)), "1970-01-01 00:00:00Z");
        assert_eq!(utc(UnixMillis(1_795_730_676_000)), "2026-11-26 22:04:36Z");
        assert_eq!(utc(UnixMillis(951_782_400_000)), "2000-02-29 00:00:00Z");
        let c = |s: &str| s.parse::<Credits>().unwrap();
        assert_eq!(percent(c("3"), c("8")), "37.5 %");
        assert_eq!(percent(c("0.001"), c("3")), "0.0 %");
        assert_eq!(
            cap(Some(c("8")), c("3"), Some(c("5"))),
            "8 (37.5 % used, 5 left)"
        );
        assert_eq!(cap(None, c("3"), None), "none");
        assert_eq!(positive_credits("2.50"), Ok(c("2.5")));
        for bad in ["0", "-1", "-0.000001", "x"] {
            assert!(positive_credits(bad).is_err(), "{bad}");
        }
    }
}
