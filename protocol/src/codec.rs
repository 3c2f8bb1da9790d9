//! The canonical encoding: one bincode 2 configuration, used for signing,
//! hashing, storage and the wire. Nothing else in rigmesh calls bincode.
//!
//! The configuration is little-endian with fixed-width integers: every
//! integer has one byte form (no varints), lengths of strings and lists are
//! `u64`, enum variants are `u32`, `Option` is a `0`/`1` byte then the value,
//! fixed-size arrays have no length. Amounts are [`crate::money::Credits`]:
//! an `i64` count of micro-credits. Decoding refuses inputs over the kind's
//! size limit before reading, never allocates past
//! [`crate::kind::MAX_MESSAGE_SIZE`], and refuses trailing bytes.

use bincode::config::{self, Configuration, Fixint, LittleEndian};
use bincode::{Decode, Encode};

use crate::error::{Error, Result};
use crate::kind::{Kind, MAX_MESSAGE_SIZE};

type Canonical = Configuration<LittleEndian, Fixint, config::Limit<MAX_MESSAGE_SIZE>>;

const CANONICAL: Canonical = config::standard()
    .with_little_endian()
    .with_fixed_int_encoding()
    .with_limit::<MAX_MESSAGE_SIZE>();

/// Encodes `value` in the canonical form. `kind` names it in errors and its
/// size limit is enforced, so nothing is sent that a peer would refuse.
pub fn encode<T: Encode>(kind: Kind, value: &T) -> Result<Vec<u8>> {
    let bytes = bincode::encode_to_vec(value, CANONICAL).map_err(|e| Error::Encode {
        kind,
        reason: e.to_string(),
    })?;
    if bytes.len() > kind.max_size() {
        return Err(Error::TooLarge {
            kind,
            size: bytes.len(),
            max: kind.max_size(),
        });
    }
    Ok(bytes)
}

/// Decodes exactly one `T` of `kind` from `bytes`: refuses input over the
/// kind's limit, malformed input and trailing bytes.
pub fn decode<T: Decode<()>>(kind: Kind, bytes: &[u8]) -> Result<T> {
    if bytes.len() > kind.max_size() {
        return Err(Error::TooLarge {
            kind,
            size: bytes.len(),
            max: kind.max_size(),
        });
    }
    let (value, read) =
        bincode::decode_from_slice::<T, _>(bytes, CANONICAL).map_err(|e| Error::Malformed {
            kind,
            reason: e.to_string(),
        })?;
    if read != bytes.len() {
        return Err(Error::TrailingBytes {
            kind,
            extra: bytes.len().saturating_sub(read),
        });
    }
    Ok(value)
}

/// Largest request-response frame (a page of catch-up sync): 1 MiB.
pub const MAX_FRAME_SIZE: usize = 1 << 20;

type Framed = Configuration<LittleEndian, Fixint, config::Limit<MAX_FRAME_SIZE>>;

const FRAMED: Framed = config::standard()
    .with_little_endian()
    .with_fixed_int_encoding()
    .with_limit::<MAX_FRAME_SIZE>();

/// Encodes a frame (a request or response that carries whole messages) in
/// the same canonical form, refusing more than `max` bytes.
pub fn encode_frame<T: Encode>(what: &'static str, value: &T, max: usize) -> Result<Vec<u8>> {
    let bytes = bincode::encode_to_vec(value, FRAMED).map_err(|e| Error::Frame {
        what,
        reason: e.to_string(),
    })?;
    if bytes.len() > max {
        return Err(Error::Frame {
            what,
            reason: format!("{} bytes is over the limit of {max}", bytes.len()),
        });
    }
    Ok(bytes)
}

/// Decodes exactly one frame of at most `max` bytes.
pub fn decode_frame<T: Decode<()>>(what: &'static str, bytes: &[u8], max: usize) -> Result<T> {
    if bytes.len() > max {
        return Err(Error::Frame {
            what,
            reason: format!("{} bytes is over the limit of {max}", bytes.len()),
        });
    }
    let (value, read) =
        bincode::decode_from_slice::<T, _>(bytes, FRAMED).map_err(|e| Error::Frame {
            what,
            reason: format!("malformed: {e}"),
        })?;
    if read != bytes.len() {
        return Err(Error::Frame {
            what,
            reason: format!("{} trailing bytes", bytes.len().saturating_sub(read)),
        });
    }
    Ok(value)
}

/// Encodes a value that is part of a larger message (a body to sign or hash)
/// without the size check of a whole message of `kind`.
pub(crate) fn encode_part<T: Encode>(kind: Kind, value: &T) -> Result<Vec<u8>> {
    bincode::encode_to_vec(value, CANONICAL).map_err(|e| Error::Encode {
        kind,
        reason: e.to_string(),
    })
}
