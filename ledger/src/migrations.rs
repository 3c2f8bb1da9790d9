//! Migrations between schema versions. Each step takes the store from one
//! version to the next; its writes and the new version number land in one
//! atomic batch, so a crash mid-migration leaves either the old version
//! (and the step runs again) or the new one.
//!
//! Version 1 is the first release, so [`MIGRATIONS`] is empty; a change to
//! any key or record layout adds a step here and bumps
//! [`crate::schema::SCHEMA_VERSION`].

use crate::error::{Error, Result};
use crate::schema::version_write;
use crate::store::{Batch, Store};

/// One step from `from` to `from + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The version it starts from.
    pub from: u32,
    /// What it changes, for the log.
    pub description: &'static str,
    /// Reads the store and returns the writes that upgrade it.
    pub run: fn(&dyn Store) -> Result<Batch>,
}

/// Every migration of this binary, in order.
pub const MIGRATIONS: &[Migration] = &[];

/// Runs the steps of `list` from `found` up to `target`, flushing after
/// each. Fails, having changed nothing more, when a step is missing.
pub fn migrate(store: &dyn Store, found: u32, target: u32, list: &[Migration]) -> Result<()> {
    // The whole path must exist before the first step runs: a store left
    // half-way by a binary that cannot finish would be worse than refusing.
    let mut steps = Vec::new();
    for version in found..target {
        let step = list
            .iter()
            .find(|m| m.from == version)
            .ok_or(Error::NoMigration {
                found,
                supported: target,
            })?;
        steps.push(step);
    }
    let mut version = found;
    for step in steps {
        tracing::info!(
            from = version,
            step = step.description,
            "migrating ledger schema"
        );
        let mut batch = (step.run)(store)?;
        version += 1;
        version_write(&mut batch, version)?;
        store.write(&batch)?;
        store.flush()?;
    }
    Ok(())
}
