//! `rigmesh keys`: account key files, in the node's key-file format (the
//! 32-byte secret seed in hex, readable by its owner only).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use rigmesh_protocol::Keypair;

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Generate a new account key and write it to a file (mode 0600).
    New {
        /// Where to write the key; refuses to overwrite an existing file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key of a key file.
    Show {
        #[command(flatten)]
        key: super::KeyFileArg,
    },
}

pub(crate) fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::New { out } => {
            let key = Keypair::generate()?;
            write_key(&out, &key)?;
            outln!("{}", key.public());
            errln!("wrote the secret key to {}", out.display());
        }
        KeysCommand::Show { key } => outln!("{}", read_key(&key.key_file)?.public()),
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `key` to a new file that only its owner can read.
pub(crate) fn write_key(path: &Path, key: &Keypair) -> anyhow::Result<()> {
    rigmesh_node::keyfile::write_seed(path, &key.seed())
        .with_context(|| format!("creating key file {}", path.display()))
}

/// Reads a key file written by [`write_key`] (refused if others can read it).
pub(crate) fn read_key(path: &Path) -> anyhow::Result<Keypair> {
    Ok(Keypair::from_seed(rigmesh_node::keyfile::read_seed(path)?))
}
