//! Reading a time column and a number column out of any CSV file with a
//! header row.

use std::io::Read;

use crate::clock::parse_timestamp;
use crate::{Error, Result};

/// Reads `(seconds, value)` pairs from a CSV with a header row: the time
/// from `time_column` (`YYYY-MM-DD HH:MM:SS` or RFC 3339) and the number
/// from `value_column`. Fields may be quoted. A row whose value is empty
/// (or `NaN`, `NA`, `null`) is a missing observation and is skipped; any
/// other field that does not parse is an error naming its line.
pub fn read_csv(
    input: impl Read,
    time_column: &str,
    value_column: &str,
) -> Result<Vec<(i64, f64)>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(input);
    let headers = reader.headers().map_err(|e| Error::Csv(e.to_string()))?;
    let find = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| Error::MissingColumn {
                name: name.to_owned(),
                found: headers.iter().collect::<Vec<_>>().join(", "),
            })
    };
    let (ti, vi) = (find(time_column)?, find(value_column)?);
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| Error::Csv(e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or("");
        let value_text = field(vi);
        if value_text.is_empty()
            || ["nan", "na", "null"]
                .iter()
                .any(|m| value_text.eq_ignore_ascii_case(m))
        {
            continue;
        }
        let seconds = parse_timestamp(field(ti)).map_err(|_| Error::BadField {
            line,
            column: time_column.to_owned(),
            text: field(ti).to_owned(),
            expected: "a time (YYYY-MM-DD HH:MM:SS or RFC 3339)",
        })?;
        let value = value_text
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| Error::BadField {
                line,
                column: value_column.to_owned(),
                text: value_text.to_owned(),
                expected: "a number",
            })?;
        rows.push((seconds, value));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_time_formats_and_quoted_fields() {
        let text = "\
id,\"when\",note,gpus
1,2024-03-01 10:00:00,\"busy, very\",\"12.5\"
2,\"2024-03-01T11:15:00Z\",plain,13
3,2024-03-01T12:00:00.000+02:00,\"said \"\"hi\"\"\",
4,2024-03-01 13:00:00,,-1e1
";
        let rows = read_csv(text.as_bytes(), "when", "gpus").unwrap();
        let base = parse_timestamp("2024-03-01 10:00:00").unwrap();
        assert_eq!(
            rows,
            vec![
                (base, 12.5),
                (base + 4_500, 13.0),
                (base + 3 * 3_600, -10.0)
            ],
            "the empty value on line 4 is a missing observation"
        );
    }

    #[test]
    fn names_what_is_wrong() {
        let err = read_csv("time,active\n".as_bytes(), "time", "busy").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no column \"busy\" in the CSV header (columns: time, active)"
        );
        let err = read_csv(
            "time,active\n2024-01-01 00:00:00,1\n2024-01-01 01:00:00,lots\n".as_bytes(),
            "time",
            "active",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3, column \"active\": \"lots\" is not a number"
        );
        let err = read_csv("time,active\n01/02/2024,1\n".as_bytes(), "time", "active").unwrap_err();
        assert!(
            err.to_string().starts_with("line 2, column \"time\""),
            "{err}"
        );
        let err = read_csv("a,b\n1,2,3\n".as_bytes(), "a", "b").unwrap_err();
        assert!(matches!(err, Error::Csv(_)), "{err}");
    }
}
