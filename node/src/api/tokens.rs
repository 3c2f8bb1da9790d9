//! API tokens: who may call which route. A token is 32 random bytes in
//! hex; the node keeps only its blake3 hash, with a name, the scopes it
//! grants, when it was made, when it expires, when it was last used and
//! whether it was revoked. The records live in a sled database of their
//! own, `<data dir>/api/tokens`, and in memory: every request is checked
//! against the memory copy, and every change is written through to sled
//! (off the async executor) before it is answered.
//!
//! On first start the node writes one bootstrap token per audience of the
//! CLI (`<data dir>/api/customer.token`, `supplier.token`, and
//! `operator.token` on a coordinator; mode 0600) with every scope of that
//! audience plus `tokens:manage`, so `rigmesh` can work at once and can
//! make narrower tokens. Hashes from the earlier single-token file
//! (`tokens.blake3`) are imported once, so old token files keep working.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rigmesh_protocol::UnixMillis;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a token may do. Each route of each listener names the one scope
/// it needs (see `specs/api.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// Read the customer's offers view, bids, leases, usage, budget.
    #[serde(rename = "customer:read")]
    CustomerRead,
    /// Bid, cancel bids, end leases, change budgets: moves money.
    #[serde(rename = "customer:trade")]
    CustomerTrade,
    /// Read the supplier's GPUs, offers, leases and earnings.
    #[serde(rename = "supplier:read")]
    SupplierRead,
    /// Read usage, spend and earnings on the analytics listener.
    #[serde(rename = "analytics:read")]
    AnalyticsRead,
    /// Read a coordinator's audit chain and books on the operator listener.
    #[serde(rename = "operator:read")]
    OperatorRead,
    /// Read and change notification channels and acknowledge alerts.
    #[serde(rename = "notify:manage")]
    NotifyManage,
    /// Create, list and revoke tokens (never wider than one's own).
    #[serde(rename = "tokens:manage")]
    TokensManage,
    /// Submit admin-signed deposits on the operator listener: moves money
    /// into accounts.
    #[serde(rename = "operator:deposit")]
    OperatorDeposit,
    /// Work the operator's queues: acknowledge suspicious-activity items,
    /// hand over admin-signed decisions on held deposits, withdrawals and
    /// dispute cases, ban and unban peers.
    #[serde(rename = "operator:review")]
    OperatorReview,
}

impl Scope {
    /// Every scope, in the order the docs list them.
    pub const ALL: [Scope; 9] = [
        Scope::CustomerRead,
        Scope::CustomerTrade,
        Scope::SupplierRead,
        Scope::AnalyticsRead,
        Scope::OperatorRead,
        Scope::OperatorDeposit,
        Scope::OperatorReview,
        Scope::NotifyManage,
        Scope::TokensManage,
    ];

    /// The scope's name, as tokens, the CLI and errors spell it.
    pub fn name(self) -> &'static str {
        match self {
            Scope::CustomerRead => "customer:read",
            Scope::CustomerTrade => "customer:trade",
            Scope::SupplierRead => "supplier:read",
            Scope::AnalyticsRead => "analytics:read",
            Scope::OperatorRead => "operator:read",
            Scope::NotifyManage => "notify:manage",
            Scope::TokensManage => "tokens:manage",
            Scope::OperatorDeposit => "operator:deposit",
            Scope::OperatorReview => "operator:review",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scope {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.name() == s)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown scope {s:?}; scopes are {}",
                    Scope::ALL.map(Scope::name).join(", ")
                ))
            })
    }
}

/// The audiences the CLI talks to, each with a bootstrap token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// Someone renting GPUs.
    Customer,
    /// A rig owner.
    Supplier,
    /// A coordinator's operator.
    Operator,
}

impl Bootstrap {
    /// The audience's name, as in token file names.
    pub fn name(self) -> &'static str {
        match self {
            Bootstrap::Customer => "customer",
            Bootstrap::Supplier => "supplier",
            Bootstrap::Operator => "operator",
        }
    }

    /// The scopes its bootstrap token grants.
    pub fn scopes(self) -> Vec<Scope> {
        match self {
            Bootstrap::Customer => vec![
                Scope::CustomerRead,
                Scope::CustomerTrade,
                Scope::AnalyticsRead,
                Scope::NotifyManage,
                Scope::TokensManage,
            ],
            Bootstrap::Supplier => vec![
                Scope::SupplierRead,
                Scope::AnalyticsRead,
                Scope::NotifyManage,
                Scope::TokensManage,
            ],
            Bootstrap::Operator => vec![
                Scope::OperatorRead,
                Scope::OperatorDeposit,
                Scope::OperatorReview,
                Scope::NotifyManage,
                Scope::TokensManage,
            ],
        }
    }

    /// The bootstrap token's name in `rigmesh token list`.
    fn token_name(self) -> String {
        format!("{}-cli", self.name())
    }
}

/// One token as stored: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// A short public id (8 random bytes, hex), for logs and revocation.
    pub id: String,
    /// A name chosen by its maker, unique on the node.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// When it was made.
    pub created_at: UnixMillis,
    /// After this it is refused (`token_expired`); none: never.
    pub expires_at: Option<UnixMillis>,
    /// Last time it was accepted (to the minute).
    pub last_used: Option<UnixMillis>,
    /// When it was revoked; a revoked token is refused (`token_revoked`).
    pub revoked_at: Option<UnixMillis>,
}

impl TokenRecord {
    /// True when it grants `scope`.
    pub fn grants(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Why a presented token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No bearer token at all.
    Missing,
    /// No token with that hash on this node.
    NotRecognised,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
}

impl TokenRefusal {
    /// The error code the HTTP answer carries.
    pub fn code(self) -> &'static str {
        match self {
            TokenRefusal::Missing => "token_missing",
            TokenRefusal::NotRecognised => "token_not_recognised",
            TokenRefusal::Expired => "token_expired",
            TokenRefusal::Revoked => "token_revoked",
        }
    }
}

/// A new token's terms.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Its name; one is made up from the id when none is given.
    #[serde(default)]
    pub name: Option<String>,
    /// Its scopes; at least one.
    pub scopes: Vec<Scope>,
    /// Seconds it lives; none: until revoked.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// A token just made: the secret, shown once, and its record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedToken {
    /// The bearer token. Not kept anywhere by the node.
    pub token: String,
    /// What the node keeps about it.
    pub record: TokenRecord,
}

/// Why a token could not be made or revoked.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The request is not acceptable (names what).
    #[error("{0}")]
    Invalid(String),
    /// No such token.
    #[error("no token named or numbered {0:?}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// Longest name a token may have.
const MAX_NAME: usize = 64;
/// Most tokens a node keeps (revoked ones included); bounds the table.
pub const MAX_TOKENS: usize = 1024;
/// `last_used` is written at most this often per token.
const LAST_USED_GRANULARITY_MS: u64 = 60_000;
/// The store's schema version.
const SCHEMA_VERSION: u64 = 1;

/// The token table: sled on disk, a copy in memory. Cheap to clone.
#[derive(Clone)]
pub struct TokenStore {
    tree: sled::Tree,
    db: sled::Db,
    by_hash: Arc<RwLock<HashMap<[u8; 32], TokenRecord>>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore").finish_non_exhaustive()
    }
}

fn store_error(e: impl std::fmt::Display) -> Error {
    Error::Store(format!("token store: {e}"))
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn api_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("api")
}

/// The bootstrap token file the CLI reads for `audience`.
pub fn token_path(data_dir: &Path, audience: Bootstrap) -> PathBuf {
    api_dir(data_dir).join(format!("{}.token", audience.name()))
}

/// Reads the bootstrap token of `audience` (for the CLI).
pub fn read_token(data_dir: &Path, audience: Bootstrap) -> Result<String> {
    let seed = crate::keyfile::read_seed(&token_path(data_dir, audience))?;
    Ok(hex::encode(seed))
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Config(format!("no random source for a new token: {e}")))?;
    Ok(bytes)
}

fn hash_of(token: &str) -> [u8; 32] {
    *blake3::hash(token.trim().as_bytes()).as_bytes()
}

impl TokenStore {
    /// Opens the table in `<data_dir>/api/tokens`, creating the bootstrap
    /// tokens of `audiences` that do not exist yet. Blocking: call it off
    /// the executor or before the server starts.
    pub fn open(data_dir: &Path, audiences: &[Bootstrap]) -> Result<Self> {
        let dir = api_dir(data_dir);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let db = rigmesh_ledger::store::open_db(&dir.join("tokens")).map_err(store_error)?;
        Self::open_in(db, data_dir, audiences)
    }

    fn open_in(db: sled::Db, data_dir: &Path, audiences: &[Bootstrap]) -> Result<Self> {
        let meta = db.open_tree("meta").map_err(store_error)?;
        match meta.get("schema").map_err(store_error)? {
            None => {
                meta.insert("schema", &SCHEMA_VERSION.to_be_bytes())
                    .map_err(store_error)?;
            }
            Some(v) if v.as_ref() == SCHEMA_VERSION.to_be_bytes() => {}
            Some(_) => {
                return Err(Error::Config(
                    "the token store was written by a newer rigmesh".into(),
                ))
            }
        }
        let tree = db.open_tree("tokens/by_hash").map_err(store_error)?;
        let mut by_hash = HashMap::new();
        for row in tree.iter() {
            let (key, value) = row.map_err(store_error)?;
            let hash: [u8; 32] = key
                .as_ref()
                .try_into()
                .map_err(|_| store_error("a key is not a 32-byte hash"))?;
            let record: TokenRecord = serde_json::from_slice(&value).map_err(store_error)?;
            by_hash.insert(hash, record);
        }
        let store = TokenStore {
            tree,
            db,
            by_hash: Arc::new(RwLock::new(by_hash)),
        };
        store.import_legacy(data_dir)?;
        for audience in audiences {
            store.bootstrap(data_dir, *audience)?;
        }
        Ok(store)
    }

    /// Imports the hashes of the single-token file of earlier versions.
    fn import_legacy(&self, data_dir: &Path) -> Result<()> {
        let path = api_dir(data_dir).join("tokens.blake3");
        if !path.exists() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(name), Some(hex_hash)) = (parts.next(), parts.next()) else {
                continue;
            };
            let audience = match name {
                "customer" => Bootstrap::Customer,
                "supplier" => Bootstrap::Supplier,
                _ => continue,
            };
            let hash = blake3::Hash::from_hex(hex_hash)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            if self.find_by_name(&audience.token_name()).is_none() {
                self.insert(*hash.as_bytes(), self.bootstrap_record(audience)?)?;
            }
        }
        let done = path.with_extension("blake3.imported");
        std::fs::rename(&path, &done).map_err(|e| io(&path, e))?;
        Ok(())
    }

    fn bootstrap_record(&self, audience: Bootstrap) -> Result<TokenRecord> {
        Ok(TokenRecord {
            id: hex::encode(random_bytes::<8>()?),
            name: audience.token_name(),
            scopes: audience.scopes(),
            created_at: UnixMillis::now(),
            expires_at: None,
            last_used: None,
            revoked_at: None,
        })
    }

    /// Writes the bootstrap token of `audience` unless its file exists.
    fn bootstrap(&self, data_dir: &Path, audience: Bootstrap) -> Result<()> {
        let path = token_path(data_dir, audience);
        if path.exists() {
            // A bootstrap token of an earlier version gains the scopes its
            // audience has gained since.
            if let Some((hash, mut record)) = self.find_by_name(&audience.token_name()) {
                let missing: Vec<Scope> = audience
                    .scopes()
                    .into_iter()
                    .filter(|s| !record.grants(*s))
                    .collect();
                if record.revoked_at.is_none() && !missing.is_empty() {
                    record.scopes.extend(missing);
                    self.insert(hash, record)?;
                }
            }
            return Ok(());
        }
        let seed: [u8; 32] = random_bytes()?;
        let token = hex::encode(seed);
        // The record first: a file without a record would be a token that
        // cannot work; a record without a file is only unusable.
        let mut record = self.bootstrap_record(audience)?;
        if let Some(old) = self.find_by_name(&record.name) {
            // The file was deleted: replace the token it held.
            self.remove(&old.0)?;
            record.name = audience.token_name();
        }
        self.insert(hash_of(&token), record)?;
        crate::keyfile::write_seed(&path, &seed)?;
        tracing::info!(path = %path.display(), "created the {} API token", audience.name());
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<[u8; 32], TokenRecord>> {
        self.by_hash
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<[u8; 32], TokenRecord>> {
        self.by_hash
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn find_by_name(&self, name: &str) -> Option<([u8; 32], TokenRecord)> {
        self.read()
            .iter()
            .find(|(_, r)| r.name == name || r.id == name)
            .map(|(h, r)| (*h, r.clone()))
    }

    /// Writes `record` to sled and flushes, then to memory. Blocking.
    fn insert(&self, hash: [u8; 32], record: TokenRecord) -> Result<()> {
        let bytes = serde_json::to_vec(&record).map_err(store_error)?;
        self.tree.insert(hash, bytes).map_err(store_error)?;
        rigmesh_ledger::store::gate::flush(&self.db).map_err(store_error)?;
        self.write().insert(hash, record);
        Ok(())
    }

    fn remove(&self, hash: &[u8; 32]) -> Result<()> {
        self.tree.remove(hash).map_err(store_error)?;
        rigmesh_ledger::store::gate::flush(&self.db).map_err(store_error)?;
        self.write().remove(hash);
        Ok(())
    }

    /// Checks a presented token: its record, or why it is refused. Reads
    /// memory only, so it may run on the executor.
    pub fn check(
        &self,
        token: Option<&str>,
        now: UnixMillis,
    ) -> std::result::Result<TokenRecord, TokenRefusal> {
        let token = token.ok_or(TokenRefusal::Missing)?;
        let record = self
            .read()
            .get(&hash_of(token))
            .cloned()
            .ok_or(TokenRefusal::NotRecognised)?;
        if record.revoked_at.is_some() {
            return Err(TokenRefusal::Revoked);
        }
        if record.expires_at.is_some_and(|at| at <= now) {
            return Err(TokenRefusal::Expired);
        }
        Ok(record)
    }

    /// True when [`TokenStore::touch`] would write: the token's last use
    /// is a minute old or more.
    pub fn needs_touch(&self, token: &str, now: UnixMillis) -> bool {
        self.read().get(&hash_of(token)).is_some_and(|r| {
            r.last_used
                .is_none_or(|t| now.since(t) >= LAST_USED_GRANULARITY_MS)
        })
    }

    /// Notes that `token` was accepted at `now`, at most once a minute per
    /// token. Blocking when it writes: call it through `spawn_blocking`.
    pub fn touch(&self, token: &str, now: UnixMillis) -> Result<()> {
        let hash = hash_of(token);
        if !self.needs_touch(token, now) {
            return Ok(());
        }
        let Some(mut record) = self.read().get(&hash).cloned() else {
            return Ok(());
        };
        record.last_used = Some(now);
        let bytes = serde_json::to_vec(&record).map_err(store_error)?;
        // Usage times are worth less than a flush per request: sled's own
        // periodic flush makes them durable.
        self.tree.insert(hash, bytes).map_err(store_error)?;
        self.write().insert(hash, record);
        Ok(())
    }

    /// Makes a token. `granter` is the token asking: a new token may not
    /// grant a scope its maker lacks. Blocking.
    pub fn create(
        &self,
        request: NewToken,
        granter: &TokenRecord,
        now: UnixMillis,
    ) -> std::result::Result<IssuedToken, TokenError> {
        if request.scopes.is_empty() {
            return Err(TokenError::Invalid(
                "a token needs at least one scope".into(),
            ));
        }
        if let Some(scope) = request.scopes.iter().find(|s| !granter.grants(**s)) {
            return Err(TokenError::Invalid(format!(
                "the token asking lacks {scope}, so it cannot grant it"
            )));
        }
        if self.read().len() >= MAX_TOKENS {
            return Err(TokenError::Invalid(format!(
                "the node keeps at most {MAX_TOKENS} tokens; remove revoked ones first"
            )));
        }
        let id = hex::encode(random_bytes::<8>()?);
        let name = request.name.unwrap_or_else(|| format!("token-{id}"));
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(TokenError::Invalid(format!(
                "a token name is 1 to {MAX_NAME} letters, digits, '-', '_' or '.': {name:?}"
            )));
        }
        if self.find_by_name(&name).is_some() {
            return Err(TokenError::Invalid(format!(
                "a token named {name:?} exists; pick another name"
            )));
        }
        let mut scopes = request.scopes;
        scopes.sort();
        scopes.dedup();
        let expires_at = match request.expires_in_secs {
            Some(0) => {
                return Err(TokenError::Invalid(
                    "an expiry must be in the future".into(),
                ))
            }
            Some(secs) => Some(now.plus_ms(secs.saturating_mul(1000))),
            None => None,
        };
        let token = hex::encode(random_bytes::<32>()?);
        let record = TokenRecord {
            id,
            name,
            scopes,
            created_at: now,
            expires_at,
            last_used: None,
            revoked_at: None,
        };
        self.insert(hash_of(&token), record.clone())?;
        Ok(IssuedToken { token, record })
    }

    /// Every token's record, oldest first.
    pub fn list(&self) -> Vec<TokenRecord> {
        let mut all: Vec<TokenRecord> = self.read().values().cloned().collect();
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
        all
    }

    /// Revokes the token with this name or id. Blocking.
    pub fn revoke(
        &self,
        name_or_id: &str,
        now: UnixMillis,
    ) -> std::result::Result<TokenRecord, TokenError> {
        let (hash, mut record) = self
            .find_by_name(name_or_id)
            .ok_or_else(|| TokenError::NotFound(name_or_id.to_string()))?;
        if record.revoked_at.is_none() {
            record.revoked_at = Some(now);
            self.insert(hash, record.clone())?;
        }
        Ok(record)
    }
}

/// Parses an expiry such as `30d`, `12h`, `45m` or `90s` into seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64> {
    let text = text.trim();
    let bad = || {
        Error::Config(format!(
            "{text:?} is not a duration: a number followed by d, h, m or s (30d, 12h)"
        ))
    };
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(bad());
    }
    n.checked_mul(unit_secs).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn scopes_round_trip_by_name() {
        for scope in Scope::ALL {
            assert_eq!(scope.name().parse::<Scope>().unwrap(), scope);
            let json = serde_json::to_string(&scope).unwrap();
            assert_eq!(json, format!("\"{}\"", scope.name()));
        }
        let err = "customer:write".parse::<Scope>().unwrap_err().to_string();
        assert!(err.contains("customer:trade"), "{err}");
    }

    #[test]
    fn durations_read_as_a_person_writes_them() {
        assert_eq!(parse_duration_secs("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_duration_secs("12h").unwrap(), 12 * 3_600);
        assert_eq!(parse_duration_secs("90s").unwrap(), 90);
        for bad in ["", "d", "0d", "3w", "-1d", "1.5h"] {
            assert!(parse_duration_secs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_hashes_are_kept_and_tokens_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let token = {
            let store = TokenStore::open(dir.path(), &[Bootstrap::Customer]).unwrap();
            let admin = read_token(dir.path(), Bootstrap::Customer).unwrap();
            let granter = store.check(Some(&admin), UnixMillis::now()).unwrap();
            let issued = store
                .create(
                    NewToken {
                        name: Some("dash".into()),
                        scopes: vec![Scope::CustomerRead],
                        expires_in_secs: None,
                    },
                    &granter,
                    UnixMillis::now(),
                )
                .unwrap();
            // A scope the granter lacks cannot be granted.
            let err = store
                .create(
                    NewToken {
                        name: None,
                        scopes: vec![Scope::OperatorRead],
                        expires_in_secs: None,
                    },
                    &granter,
                    UnixMillis::now(),
                )
                .unwrap_err();
            assert!(err.to_string().contains("operator:read"), "{err}");
            issued.token
        };
        let store = TokenStore::open(dir.path(), &[Bootstrap::Customer]).unwrap();
        let record = store.check(Some(&token), UnixMillis::now()).unwrap();
        assert_eq!(record.name, "dash");
        assert_eq!(store.list().len(), 2);
        store.revoke("dash", UnixMillis::now()).unwrap();
        assert_eq!(
            store.check(Some(&token), UnixMillis::now()),
            Err(TokenRefusal::Revoked)
        );
        drop(store);
        // Nothing on disk holds the secret.
        for entry in walk(&dir.path().join("api/tokens")) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "{} holds the token",
                entry.display()
            );
        }
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    #[test]
    fn legacy_hashes_are_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let seed = [7u8; 32];
        crate::keyfile::write_seed(&token_path(dir.path(), Bootstrap::Customer), &seed).unwrap();
        let token = hex::encode(seed);
        std::fs::write(
            dir.path().join("api/tokens.blake3"),
            format!("customer {}\n", blake3::hash(token.as_bytes()).to_hex()),
        )
        .unwrap();
        let store = TokenStore::open(dir.path(), &[Bootstrap::Customer]).unwrap();
        let record = store.check(Some(&token), UnixMillis::now()).unwrap();
        assert!(record.grants(Scope::CustomerTrade));
        assert_eq!(store.list().len(), 1);
    }
}
