//! The one encoding of the ledger's own records (journal entries, balances,
//! audit records, lease books, ...): the only place their bytes are defined.
//!
//! A stored value is `format (1 byte) || body || checksum (4 bytes)`:
//! - `format` is [`RECORD_FORMAT`]; a reader refuses any other, so a future
//!   layout is a new format number plus a migration, never a guess;
//! - `body` is bincode 2 with fixed-size little-endian integers, derived from
//!   the Rust type (money is `Credits`, a whole number of micro-credits, via
//!   its own `Encode`; `rust_decimal` never goes through serde here);
//! - `checksum` is the first 4 bytes of blake3 over `format || body`, so a
//!   flipped bit on disk is an error naming the record, not a wrong value.
//!
//! Messages of the protocol are stored as their canonical signed bytes
//! inside a [`StoredMessage`] record: the protocol codec defines those bytes
//! and this module only wraps them.

use bincode::{Decode, Encode};

use crate::error::{Error, Result};

/// The record layout this binary writes and reads.
pub const RECORD_FORMAT: u8 = 1;

/// Largest stored record, in bytes; decoding never allocates beyond it.
pub const MAX_RECORD_LEN: usize = 1 << 20;

const CHECKSUM_LEN: usize = 4;

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_little_endian()
        .with_limit::<MAX_RECORD_LEN>()
}

fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_LEN] {
    let hash = blake3::hash(bytes);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(
        hash.as_bytes()
            .get(..CHECKSUM_LEN)
            .unwrap_or(&[0; CHECKSUM_LEN]),
    );
    out
}

/// A type stored as a ledger record.
pub trait Record: Encode + Decode<()> + Sized {
    /// What it is, for error messages.
    const WHAT: &'static str;

    /// Its stored bytes.
    fn to_record(&self) -> Result<Vec<u8>> {
        encode(Self::WHAT, self)
    }

    /// Reads stored bytes back, checking format, checksum and length.
    fn from_record(bytes: &[u8]) -> Result<Self> {
        decode(Self::WHAT, bytes)
    }
}

/// Encodes `value` as a record.
pub fn encode<T: Encode>(what: &'static str, value: &T) -> Result<Vec<u8>> {
    let mut out = vec![RECORD_FORMAT];
    bincode::encode_into_std_write(value, &mut out, config())
        .map_err(|e| Error::corrupt(what, format!("cannot encode: {e}")))?;
    if out.len() + CHECKSUM_LEN > MAX_RECORD_LEN {
        return Err(Error::TooLarge {
            what,
            max: MAX_RECORD_LEN,
        });
    }
    let sum = checksum(&out);
    out.extend_from_slice(&sum);
    Ok(out)
}

/// Decodes a record written by [`encode`].
pub fn decode<T: Decode<()>>(what: &'static str, bytes: &[u8]) -> Result<T> {
    if bytes.len() > MAX_RECORD_LEN {
        return Err(Error::corrupt(what, format!("{} bytes", bytes.len())));
    }
    let Some(split) = bytes.len().checked_sub(CHECKSUM_LEN) else {
        return Err(Error::corrupt(what, "shorter than its checksum"));
    };
    let (content, sum) = bytes.split_at(split);
    if checksum(content) != sum {
        return Err(Error::corrupt(what, "checksum mismatch"));
    }
    let Some((format, body)) = content.split_first() else {
        return Err(Error::corrupt(what, "empty record"));
    };
    if *format != RECORD_FORMAT {
        return Err(Error::corrupt(
            what,
            format!("record format {format}, this binary reads {RECORD_FORMAT}"),
        ));
    }
    let (value, read) = bincode::decode_from_slice(body, config())
        .map_err(|e| Error::corrupt(what, e.to_string()))?;
    if read != body.len() {
        return Err(Error::corrupt(
            what,
            format!("{} trailing bytes", body.len() - read),
        ));
    }
    Ok(value)
}

/// The canonical bytes of a protocol message, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct StoredMessage(pub Vec<u8>);

impl Record for StoredMessage {
    const WHAT: &'static str = "stored message";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Encode, Decode)]
    struct Sample {
        a: u64,
        b: String,
    }

    #[test]
    fn records_round_trip() {
        let value = Sample {
            a: 7,
            b: "seven".into(),
        };
        let bytes = encode("sample", &value).unwrap();
        assert_eq!(bytes.first(), Some(&RECORD_FORMAT));
        assert_eq!(decode::<Sample>("sample", &bytes).unwrap(), value);
    }

    #[test]
    fn any_flipped_bit_is_an_error_not_a_value() {
        let bytes = encode(
            "sample",
            &Sample {
                a: 7,
                b: "seven".into(),
            },
        )
        .unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    decode::<Sample>("sample", &bad).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
        assert!(decode::<Sample>("sample", &[]).is_err());
        assert!(decode::<Sample>("sample", &bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn an_unknown_format_is_refused_even_with_a_good_checksum() {
        let mut content = vec![RECORD_FORMAT + 1];
        content.extend_from_slice(&7u64.to_le_bytes());
        let sum = checksum(&content);
        content.extend_from_slice(&sum);
        let err = decode::<u64>("sample", &content).unwrap_err();
        assert!(err.to_string().contains("record format 2"), "{err}");
    }

    #[test]
    fn a_huge_length_prefix_does_not_allocate() {
        // A Vec<u8> whose length prefix claims far more than the limit.
        let mut content = vec![RECORD_FORMAT];
        content.extend_from_slice(&u64::MAX.to_le_bytes());
        let sum = checksum(&content);
        content.extend_from_slice(&sum);
        assert!(decode::<StoredMessage>("message", &content).is_err());
    }
}
