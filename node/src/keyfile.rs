//! Key files: a 32-byte ed25519 seed in hex, created readable by the owner
//! only (0600) and refused when anyone else can read it. The node's libp2p
//! key and account keys use the same format.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads a seed file.
pub fn read_seed(path: &Path) -> Result<[u8; 32]> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| io_error(path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(Error::Config(format!(
                "{} is readable by others (mode {:o}); run chmod 600 on it",
                path.display(),
                mode & 0o777
            )));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    let bytes = hex::decode(text.trim())
        .map_err(|_| Error::Config(format!("{} does not hold a hex key", path.display())))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        Error::Config(format!(
            "{} holds {} bytes; a key is 32",
            path.display(),
            bytes.len()
        ))
    })
}

/// Writes a new seed file (mode 0600); refuses to overwrite one.
pub fn write_seed(path: &Path, seed: &[u8; 32]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| io_error(path, e))?;
    writeln!(file, "{}", hex::encode(seed)).map_err(|e| io_error(path, e))?;
    file.sync_all().map_err(|e| io_error(path, e))
}

/// Reads the seed at `path`, or creates one from the OS random source.
pub fn load_or_create_seed(path: &Path) -> Result<[u8; 32]> {
    if path.exists() {
        return read_seed(path);
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| Error::Config(format!("no random source for a new key: {e}")))?;
    write_seed(path, &seed)?;
    tracing::info!(path = %path.display(), "created a new key");
    Ok(seed)
}

/// The node's libp2p identity from the seed at `path` (created on first run).
pub fn load_or_create_node_key(path: &Path) -> Result<libp2p::identity::Keypair> {
    let seed = load_or_create_seed(path)?;
    libp2p::identity::Keypair::ed25519_from_bytes(seed)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_key_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/node.key");
        let first = load_or_create_node_key(&path).unwrap();
        let again = load_or_create_node_key(&path).unwrap();
        assert_eq!(first.public(), again.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = read_seed(&path).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        assert!(
            write_seed(&path, &[0; 32]).is_err(),
            "never overwrite a key"
        );
    }

    #[test]
    fn garbage_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_seed(&path, &[1; 32]).unwrap();
        std::fs::write(&path, "abcd").unwrap();
        assert!(read_seed(&path).is_err());
    }
}
