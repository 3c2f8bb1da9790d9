//! Key encodings: how each key type becomes bytes whose byte order is the
//! order the ledger scans in (big-endian integers, sign-flipped amounts,
//! length-prefixed text), and how stored keys are read back without
//! trusting them.

use rigmesh_protocol::{Credits, Id, PublicKey, UnixMillis};

use crate::error::{Error, Result};

/// A type usable as (part of) a key.
pub trait Key: Sized {
    /// Appends the encoding to `out`.
    fn write_key(&self, out: &mut Vec<u8>);

    /// Reads one value from the front of `input`.
    fn read_key(input: &mut KeyReader<'_>) -> Result<Self>;

    /// The encoding on its own.
    fn to_key(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_key(&mut out);
        out
    }

    /// Reads a whole stored key; leftover bytes are an error.
    fn from_key(bytes: &[u8]) -> Result<Self> {
        let mut reader = KeyReader { bytes };
        let key = Self::read_key(&mut reader)?;
        if !reader.bytes.is_empty() {
            return Err(Error::corrupt(
                "key",
                format!("{} trailing bytes", reader.bytes.len()),
            ));
        }
        Ok(key)
    }
}

/// Keys whose encoding starts with the encoding of a `P`, so "every key
/// with this `P`" is a prefix scan.
pub trait KeyPrefix<P: Key>: Key {}

/// Reads keys from stored bytes.
#[derive(Debug)]
pub struct KeyReader<'a> {
    bytes: &'a [u8],
}

impl<'a> KeyReader<'a> {
    /// Takes `n` bytes from the front.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(Error::corrupt(
                "key",
                format!("needs {n} more bytes, has {}", self.bytes.len()),
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// Takes a fixed-size array from the front.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

impl Key for u8 {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
    fn read_key(input: &mut KeyReader<'_>) -> Result<Self> {
        let [b] = input.array::<1>()?;
        Ok(b)
    }
}

impl Key for u64 {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
    fn read_key(input: &mut KeyReader<'_>) -> Result<Self> {
        Ok(u64::from_be_bytes(input.array()?))
    }
}

impl Key for UnixMillis {
    fn write_key(&self, out: &mut Vec<u8>) {
        self.0.write_key(out);
    }
    fn read_key(input: &mut KeyReader<'_>) -> Result<Self> {
        Ok(UnixMillis(u64::read_key(input)?))
    }
}

/// Amounts sort by value: the sign bit is flipped so negative amounts come
/// first and the big-endian bytes order like the numbers.
impl Key for Credits {
    fn write_key(&self, out: &mut Vec<u8>) {
        let ordered = (self.units() as u64) ^ (1 << 63);
        ordered.write_key(out);
    }
    fn read_key(input: &mut KeyReader<'_>) -> Result<Self> {
        let ordered = u64::read_key(input)?;
        Ok(Credits::from_units((ordered ^ (1 << 63)) as i64))
    }
}

impl Key for Id {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn read_key(input: &mut KeyReader<'_>) -> Result<Self> {
        Ok(Id(input.array()?))
    }
}

impl Key for PublicKey {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn read_key(input: &mut KeyReader<'_>) -> Result<Self> {
        Ok(PublicKey(input.array()?))
    }
}

/// Short bytes in a key (a GPU model name, a peer id): one length byte,
/// then the bytes, so a value is never a prefix of a longer one and the
/// part after it can still be read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShortBytes(Vec<u8>);

impl ShortBytes {
    /// Longest value, in bytes.
    pub const MAX: usize = u8::MAX as usize;

    /// Wraps `bytes`, refusing more than [`ShortBytes::MAX`].
    pub fn new(what: &'static str, bytes: &[u8]) -> Result<Self> {
        if bytes.len() > Self::MAX {
            return Err(Error::TooLarge {
                what,
                max: Self::MAX,
            });
        }
        Ok(ShortBytes(bytes.to_vec()))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Key for ShortBytes {
    fn write_key(&self, out: &mut Vec<u8>) {
        // `new` bounds the length, so it fits one byte.
        out.push(u8::try_from(self.0.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&self.0);
    }
    fn read_key(input: &mut KeyReader<'_>) -> Result<Self> {
        let len = u8::read_key(input)?;
        Ok(ShortBytes(input.take(usize::from(len))?.to_vec()))
    }
}

impl<A: Key, B: Key> Key for (A, B) {
    fn write_key(&self, out: &mut Vec<u8>) {
        self.0.write_key(out);
        self.1.write_key(out);
    }
    fn read_key(input: &mut KeyReader<'_>) -> Result<Self> {
        Ok((A::read_key(input)?, B::read_key(input)?))
    }
}

impl<A: Key, B: Key, C: Key> Key for (A, B, C) {
    fn write_key(&self, out: &mut Vec<u8>) {
        self.0.write_key(out);
        self.1.write_key(out);
        self.2.write_key(out);
    }
    fn read_key(input: &mut KeyReader<'_>) -> Result<Self> {
        Ok((
            A::read_key(input)?,
            B::read_key(input)?,
            C::read_key(input)?,
        ))
    }
}

impl<A: Key, B: Key> KeyPrefix<A> for (A, B) {}
impl<A: Key, B: Key, C: Key> KeyPrefix<A> for (A, B, C) {}
impl<A: Key, B: Key, C: Key> KeyPrefix<(A, B)> for (A, B, C) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_sort_like_numbers() {
        let values = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        let keys: Vec<Vec<u8>> = values
            .iter()
            .map(|v| Credits::from_units(*v).to_key())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for v in values {
            let c = Credits::from_units(v);
            assert_eq!(Credits::from_key(&c.to_key()).unwrap(), c);
        }
    }

    #[test]
    fn composite_keys_round_trip_and_refuse_bad_bytes() {
        let key = (
            ShortBytes::new("model", b"H100").unwrap(),
            Credits::from_units(2_490_000),
            Id([9; 32]),
        );
        let bytes = key.to_key();
        assert_eq!(<(ShortBytes, Credits, Id)>::from_key(&bytes).unwrap(), key);
        assert!(<(ShortBytes, Credits, Id)>::from_key(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(<(ShortBytes, Credits, Id)>::from_key(&longer).is_err());
        assert!(ShortBytes::new("model", &[0; 256]).is_err());
    }
}
