//! `rigmesh keys`: account key files. A key file holds the 32-byte secret
//! seed in hex and is created readable by its owner only.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
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
            println!("{}", key.public());
            eprintln!("wrote the secret key to {}", out.display());
        }
        KeysCommand::Show { key } => println!("{}", read_key(&key.key_file)?.public()),
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `key` to a new file that only its owner can read.
pub(crate) fn write_key(path: &Path, key: &Keypair) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating key file {}", path.display()))?;
    writeln!(file, "{}", hex::encode(key.seed()))?;
    file.sync_all()?;
    Ok(())
}

/// Reads a key file written by [`write_key`].
pub(crate) fn read_key(path: &Path) -> anyhow::Result<Keypair> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading key file {}", path.display()))?;
    let bytes = hex::decode(text.trim())
        .with_context(|| format!("{} does not hold a hex key", path.display()))?;
    let Ok(seed) = <[u8; 32]>::try_from(bytes.as_slice()) else {
        bail!(
            "{} holds {} bytes; a key is 32",
            path.display(),
            bytes.len()
        );
    };
    Ok(Keypair::from_seed(seed))
}
