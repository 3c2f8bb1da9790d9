//! The schema version: one number in the meta tree saying which layout of
//! trees, keys and records the store holds. It is checked at every open:
//! a fresh store gets the current version, an older one is migrated
//! ([`crate::migrations`]), and a newer one is refused before anything is
//! read or written, so an old binary never misreads a new store.
//!
//! The version is stored as 4 big-endian bytes rather than as a record, so
//! it stays readable whatever the record format ([`crate::codec`]) becomes.

use bincode::{Decode, Encode};

use crate::codec::Record;
use crate::columns::{SchemaVersions, Slot, TypedStore};
use crate::error::{Error, Result};
use crate::migrations::{self, Migration};
use crate::store::{Batch, Store};

/// The schema this binary writes.
pub const SCHEMA_VERSION: u32 = 5;

/// A stored schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Encode, Decode)]
pub struct SchemaVersion(pub u32);

impl Record for SchemaVersion {
    const WHAT: &'static str = "schema version";

    fn to_record(&self) -> Result<Vec<u8>> {
        Ok(self.0.to_be_bytes().to_vec())
    }

    fn from_record(bytes: &[u8]) -> Result<Self> {
        let bytes: [u8; 4] = bytes.try_into().map_err(|_| {
            Error::corrupt(Self::WHAT, format!("{} bytes, expected 4", bytes.len()))
        })?;
        Ok(SchemaVersion(u32::from_be_bytes(bytes)))
    }
}

/// The version stored, if any.
pub fn stored_version(store: &dyn Store) -> Result<Option<u32>> {
    Ok(store.get_in::<SchemaVersions>(&Slot)?.map(|v| v.0))
}

/// Batch that records `version`.
pub(crate) fn version_write(batch: &mut Batch, version: u32) -> Result<()> {
    batch.put_in::<SchemaVersions>(&Slot, &SchemaVersion(version))
}

/// Checks the store's version at open and brings it to
/// [`SCHEMA_VERSION`] with `list`; returns the version found (`None` for
/// a fresh store).
pub fn open_schema(store: &dyn Store, list: &[Migration]) -> Result<Option<u32>> {
    open_schema_to(store, list, SCHEMA_VERSION)
}

/// [`open_schema`] toward an explicit target (tests exercise migration
/// paths with it).
pub fn open_schema_to(store: &dyn Store, list: &[Migration], target: u32) -> Result<Option<u32>> {
    match stored_version(store)? {
        None => {
            let mut batch = Batch::new();
            version_write(&mut batch, target)?;
            store.write(&batch)?;
            store.flush()?;
            Ok(None)
        }
        Some(found) if found == target => Ok(Some(found)),
        Some(found) if found > target => Err(Error::SchemaTooNew {
            found,
            supported: target,
        }),
        Some(found) => {
            migrations::migrate(store, found, target, list)?;
            Ok(Some(found))
        }
    }
}
