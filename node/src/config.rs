//! Node configuration: a TOML file with `#[serde(default)]` everywhere, and
//! command-line flags that override it, applied in one place
//! ([`NodeConfig::apply`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use rigmesh_protocol::{CoordinatorSet, PublicKey};
use serde::{Deserialize, Serialize};

use crate::api::{Listener, ListenerLimits};
use crate::error::{Error, Result};
use crate::network::NetworkConfig;

/// What a node does in the market.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Relays and stores market data only.
    #[default]
    Relay,
    /// Offers GPUs.
    Supplier,
    /// Leases GPUs.
    Customer,
    /// Settles money.
    Coordinator,
}

impl std::str::FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "relay" => Ok(Role::Relay),
            "supplier" => Ok(Role::Supplier),
            "customer" => Ok(Role::Customer),
            "coordinator" => Ok(Role::Coordinator),
            other => Err(Error::Config(format!(
                "unknown role {other:?}; roles are relay, supplier, customer, coordinator"
            ))),
        }
    }
}

/// The coordinator set of an epoch and the settlement terms all its
/// members share (specs/settlement.md section 12), as configured. Every
/// node of the market carries the same table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorsConfig {
    /// Epoch number.
    pub epoch: u64,
    /// Public keys (hex) of the coordinators.
    pub members: Vec<PublicKey>,
    /// Addresses of the coordinators' nodes, dialled at start.
    #[serde(default)]
    pub addresses: Vec<Multiaddr>,
    /// The administrative key whose deposits coordinators accept (the
    /// first admin key; `admins` adds more).
    #[serde(default)]
    pub admin: Option<PublicKey>,
    /// More admin keys, hex. With `admin`, the keys whose deposits are
    /// accepted and whose approvals decide held deposits and withdrawals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admins: Vec<PublicKey>,
    /// A deposit above this many credits is applied only once an admin
    /// key other than its signer approves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deposit_approval_above: Option<rust_decimal::Decimal>,
    /// A deposit above this many credits raises an operator alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deposit_alert_above: Option<rust_decimal::Decimal>,
    /// A withdrawal above this many credits gets no coordinator's vote
    /// until an admin approves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawal_review_above: Option<rust_decimal::Decimal>,
    /// A withdrawal to a destination its account has never withdrawn to
    /// gets no coordinator's vote until an admin approves it.
    #[serde(default)]
    pub review_new_destinations: bool,
    /// Fraction of each settlement paid as the coordinators' fee.
    #[serde(default = "default_fee_rate")]
    pub fee_rate: rust_decimal::Decimal,
    /// Seconds after a window's end after which an unanswered attestation
    /// counts as accepted.
    #[serde(default = "default_unacked_timeout_secs")]
    pub unacked_timeout_secs: u64,
    /// A supplier settles every this many decided windows during a lease.
    #[serde(default = "default_settle_every")]
    pub settle_every_windows: u64,
    /// A coordinator publishes changed reputation scores this often.
    #[serde(default = "default_report_secs")]
    pub reputation_report_secs: u64,
    /// Seconds after a lease's end (or its termination) that its supplier
    /// has to settle it finally; after that its customer can have the
    /// escrow released (what it acked is still paid).
    #[serde(default = "default_release_grace_secs")]
    pub release_grace_secs: u64,
    /// On a coordinator: a member this node has had no connection to for
    /// this many seconds raises `coordinator.unreachable` for the
    /// operators (resolved when it is back); 0: never. A local choice,
    /// which the members need not share.
    #[serde(default = "default_member_unreachable_secs")]
    pub member_unreachable_secs: u64,
    /// A coordinator compares the accounts of its recent journal with the
    /// other members' this often; a member that holds another balance,
    /// debit sequence or escrow for an account on two comparisons in a
    /// row, with nothing moving in between, raises `books.disagree` for
    /// its operators. 0: never. A local choice.
    #[serde(default = "default_books_compare_secs")]
    pub books_compare_secs: u64,
    /// Seconds after this node finds a lease finally settled (its final
    /// settlement or release, every earlier settlement and every dispute
    /// case's resolution, certified by this set) before it deletes the
    /// lease's usage evidence from its gossip store; the certificates
    /// stay, except at a coordinator, whose books keep them
    /// (specs/protocol.md 9.1). A coordinator also deletes, that long
    /// after it applied the lease's final settlement, the vote locks and
    /// vote evidence it kept for the lease (specs/settlement.md 3). A
    /// local choice; default 7 days.
    #[serde(default = "default_evidence_grace_secs")]
    pub evidence_grace_secs: u64,
    /// The same, for a lease this node is party to none of (on a
    /// supplier's or customer's node: neither its supplier nor its
    /// customer): its evidence and certificates serve the node for
    /// nothing once the lease is finally settled, and they are the
    /// whole market's, so they go sooner (specs/protocol.md 9.1); never
    /// later than `evidence_grace_secs`. A coordinator keeps every lease
    /// for `evidence_grace_secs`. A local choice; default 1 hour.
    #[serde(default = "default_others_evidence_grace_secs")]
    pub others_evidence_grace_secs: u64,
    /// How often the node looks for leases to compact (each round does a
    /// bounded amount of work: 10,000 messages, so the default keeps
    /// ahead of the usage a busy market makes; a coordinator's books also
    /// at most 1,000 closed leases, the next pass at the next 2 s tick when more are
    /// due). Default 10.
    #[serde(default = "default_compact_every_secs")]
    pub compact_every_secs: u64,
    /// On a coordinator: how often a round of the standing check of its
    /// books and audit chain runs (what was written since the round
    /// before, and 50,000 older journal entries and audit records walked
    /// again); a failure raises `books.integrity` for its operators.
    /// Default 60; 0 is taken as 1, and rounds run at most once every 2 s
    /// (the coordinator's housekeeping tick). A local choice.
    #[serde(default = "default_integrity_check_secs")]
    pub integrity_check_secs: u64,
}

fn default_integrity_check_secs() -> u64 {
    60
}

fn default_compact_every_secs() -> u64 {
    10
}

fn default_evidence_grace_secs() -> u64 {
    7 * 24 * 3600
}

fn default_others_evidence_grace_secs() -> u64 {
    3600
}

fn default_books_compare_secs() -> u64 {
    60
}

fn default_release_grace_secs() -> u64 {
    3600
}

fn default_member_unreachable_secs() -> u64 {
    120
}

fn default_report_secs() -> u64 {
    60
}

fn default_fee_rate() -> rust_decimal::Decimal {
    rust_decimal::Decimal::new(1, 2)
}

fn default_unacked_timeout_secs() -> u64 {
    120
}

fn default_settle_every() -> u64 {
    10
}

impl CoordinatorsConfig {
    /// A set with the default terms.
    pub fn new(epoch: u64, members: Vec<PublicKey>) -> Self {
        CoordinatorsConfig {
            epoch,
            members,
            addresses: Vec::new(),
            admin: None,
            admins: Vec::new(),
            deposit_approval_above: None,
            deposit_alert_above: None,
            withdrawal_review_above: None,
            review_new_destinations: false,
            fee_rate: default_fee_rate(),
            unacked_timeout_secs: default_unacked_timeout_secs(),
            settle_every_windows: default_settle_every(),
            reputation_report_secs: default_report_secs(),
            release_grace_secs: default_release_grace_secs(),
            member_unreachable_secs: default_member_unreachable_secs(),
            books_compare_secs: default_books_compare_secs(),
            evidence_grace_secs: default_evidence_grace_secs(),
            others_evidence_grace_secs: default_others_evidence_grace_secs(),
            compact_every_secs: default_compact_every_secs(),
            integrity_check_secs: default_integrity_check_secs(),
        }
    }

    /// The admin keys: `admin` and then `admins`, each once.
    pub fn admin_keys(&self) -> Vec<PublicKey> {
        let mut keys: Vec<PublicKey> = Vec::new();
        for key in self.admin.iter().chain(&self.admins) {
            if !keys.contains(key) {
                keys.push(*key);
            }
        }
        keys
    }

    /// The deposit alert threshold, in exact credits.
    pub fn deposit_alert(&self) -> Result<Option<rigmesh_protocol::Credits>> {
        credits("deposit_alert_above", self.deposit_alert_above)
    }

    /// The shared terms as the coordinator rules use them.
    pub fn rules(&self) -> Result<rigmesh_ledger::CoordinatorConfig> {
        Ok(rigmesh_ledger::CoordinatorConfig {
            set: CoordinatorSet::new(self.epoch, self.members.clone())?,
            fee_rate: rigmesh_ledger::FeeRate::new(self.fee_rate)
                .map_err(|e| Error::Config(format!("coordinators.fee_rate: {e}")))?,
            unacked_timeout_ms: self.unacked_timeout_secs.saturating_mul(1000),
            admins: self.admin_keys(),
            review: rigmesh_ledger::ReviewRules {
                deposit_approval_above: credits(
                    "deposit_approval_above",
                    self.deposit_approval_above,
                )?,
                withdrawal_review_above: credits(
                    "withdrawal_review_above",
                    self.withdrawal_review_above,
                )?,
                review_new_destinations: self.review_new_destinations,
            },
            skew_ms: rigmesh_protocol::time::DEFAULT_CLOCK_SKEW_MS,
            release_grace_ms: self.release_grace_secs.saturating_mul(1000),
        })
    }
}

/// A configured amount in exact credits: at most six decimal places, not
/// below zero.
fn credits(
    key: &str,
    amount: Option<rust_decimal::Decimal>,
) -> Result<Option<rigmesh_protocol::Credits>> {
    amount
        .map(|a| {
            let c = rigmesh_protocol::Credits::new(a)
                .map_err(|e| Error::Config(format!("coordinators.{key}: {e}")))?;
            if c.is_negative() {
                return Err(Error::Config(format!(
                    "coordinators.{key}: {a} is below zero"
                )));
            }
            Ok(c)
        })
        .transpose()
}

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Role in the market.
    pub role: Role,
    /// Where the ledger and keys live.
    pub data_dir: PathBuf,
    /// The libp2p key (created on first run); default `<data_dir>/node.key`.
    pub node_key: Option<PathBuf>,
    /// Networking.
    pub network: NetworkConfig,
    /// Address of the monitoring listener (`/metrics`, `/health`);
    /// loopback by default.
    pub monitoring: SocketAddr,
    /// Address of the customer API for the CLI; loopback by default.
    pub customer_api: SocketAddr,
    /// Address of the supplier API for the CLI; loopback by default.
    pub supplier_api: SocketAddr,
    /// Address of the public API (read-only market data, no token).
    pub public_api: SocketAddr,
    /// Address of the analytics API (read-only usage, spend, earnings).
    pub analytics_api: SocketAddr,
    /// Address of a coordinator's operator API; loopback unless
    /// `[http.operator_tls]` is set.
    pub operator_api: SocketAddr,
    /// The firewall of each listener, and the operator listener's TLS.
    pub http: HttpConfig,
    /// The coordinator set, needed to check certificates.
    pub coordinators: Option<CoordinatorsConfig>,
    /// The account key (created on first run); default `<data_dir>/account.key`.
    pub account_key: Option<PathBuf>,
    /// Supplier settings: GPU source, prices, lease terms.
    pub supplier: crate::supplier::SupplierConfig,
    /// Customer settings: how long settled leases stay watched.
    pub customer: crate::customer::CustomerConfig,
    /// Notifications: channels, recipients, routes (see `rigmesh-notify`);
    /// none: alerts are logged and kept, never sent.
    pub notify: Option<rigmesh_notify::NotifyConfig>,
    /// Series and forecasts: how often the node samples the market and
    /// its leases, and how far ahead a customer is warned of its caps.
    pub forecast: crate::trends::ForecastConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            role: Role::default(),
            data_dir: PathBuf::from("rigmesh-data"),
            node_key: None,
            network: NetworkConfig::default(),
            monitoring: SocketAddr::from(([127, 0, 0, 1], 9600)),
            customer_api: SocketAddr::from(([127, 0, 0, 1], 9610)),
            supplier_api: SocketAddr::from(([127, 0, 0, 1], 9611)),
            public_api: SocketAddr::from(([127, 0, 0, 1], 9620)),
            analytics_api: SocketAddr::from(([127, 0, 0, 1], 9612)),
            operator_api: SocketAddr::from(([127, 0, 0, 1], 9630)),
            http: HttpConfig::default(),
            coordinators: None,
            account_key: None,
            supplier: crate::supplier::SupplierConfig::default(),
            customer: crate::customer::CustomerConfig::default(),
            notify: None,
            forecast: crate::trends::ForecastConfig::default(),
        }
    }
}

/// The firewall limits of each HTTP listener (`[http.<listener>]`), and
/// the operator listener's TLS files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// The public listener: open to every network by default.
    #[serde(deserialize_with = "crate::api::firewall::public_limits")]
    pub public: ListenerLimits,
    /// The customer listener.
    #[serde(deserialize_with = "crate::api::firewall::private_limits")]
    pub customer: ListenerLimits,
    /// The supplier listener.
    #[serde(deserialize_with = "crate::api::firewall::private_limits")]
    pub supplier: ListenerLimits,
    /// The analytics listener.
    #[serde(deserialize_with = "crate::api::firewall::private_limits")]
    pub analytics: ListenerLimits,
    /// The operator listener.
    #[serde(deserialize_with = "crate::api::firewall::private_limits")]
    pub operator: ListenerLimits,
    /// The monitoring listener.
    #[serde(deserialize_with = "crate::api::firewall::private_limits")]
    pub monitoring: ListenerLimits,
    /// Certificate and key for the operator listener; required to bind
    /// it off loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_tls: Option<crate::api::tls::TlsFiles>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            public: ListenerLimits::open_to_all(),
            customer: ListenerLimits::default(),
            supplier: ListenerLimits::default(),
            analytics: ListenerLimits::default(),
            operator: ListenerLimits::default(),
            monitoring: ListenerLimits::default(),
            operator_tls: None,
        }
    }
}

impl HttpConfig {
    /// The limits of `listener`.
    pub fn limits(&self, listener: Listener) -> &ListenerLimits {
        match listener {
            Listener::Public => &self.public,
            Listener::Customer => &self.customer,
            Listener::Supplier => &self.supplier,
            Listener::Analytics => &self.analytics,
            Listener::Operator => &self.operator,
            Listener::Monitoring => &self.monitoring,
        }
    }
}

/// Command-line values that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--role`.
    pub role: Option<Role>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen` (replaces the file's list when given).
    pub listen: Vec<Multiaddr>,
    /// `--bootstrap` (added to the file's list).
    pub bootstrap: Vec<Multiaddr>,
    /// `--monitoring`.
    pub monitoring: Option<SocketAddr>,
    /// `--mdns`.
    pub mdns: bool,
    /// `--customer-api`.
    pub customer_api: Option<SocketAddr>,
    /// `--supplier-api`.
    pub supplier_api: Option<SocketAddr>,
    /// `--public-api`.
    pub public_api: Option<SocketAddr>,
    /// `--analytics-api`.
    pub analytics_api: Option<SocketAddr>,
    /// `--operator-api`.
    pub operator_api: Option<SocketAddr>,
}

impl NodeConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let config: NodeConfig =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        for listener in Listener::ALL {
            config
                .http
                .limits(listener)
                .check(listener.name())
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        }
        if let Some(notify) = &config.notify {
            notify
                .check()
                .map_err(|e| Error::Config(format!("{}: [notify]: {e}", path.display())))?;
        }
        Ok(config)
    }

    /// Applies command-line overrides: the one place flags beat the file.
    pub fn apply(mut self, o: Overrides) -> Self {
        if let Some(role) = o.role {
            self.role = role;
        }
        if let Some(dir) = o.data_dir {
            self.data_dir = dir;
        }
        if !o.listen.is_empty() {
            self.network.listen = o.listen;
        }
        self.network.bootstrap.extend(o.bootstrap);
        if let Some(addr) = o.monitoring {
            self.monitoring = addr;
        }
        self.network.mdns |= o.mdns;
        if let Some(addr) = o.customer_api {
            self.customer_api = addr;
        }
        if let Some(addr) = o.supplier_api {
            self.supplier_api = addr;
        }
        if let Some(addr) = o.public_api {
            self.public_api = addr;
        }
        if let Some(addr) = o.analytics_api {
            self.analytics_api = addr;
        }
        if let Some(addr) = o.operator_api {
            self.operator_api = addr;
        }
        self
    }

    /// The node key path.
    pub fn node_key_path(&self) -> PathBuf {
        self.node_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("node.key"))
    }

    /// The account key path.
    pub fn account_key_path(&self) -> PathBuf {
        self.account_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("account.key"))
    }

    /// The configured coordinator set, checked.
    pub fn coordinator_set(&self) -> Result<Option<CoordinatorSet>> {
        self.coordinators
            .as_ref()
            .map(|c| CoordinatorSet::new(c.epoch, c.members.clone()).map_err(Error::from))
            .transpose()
    }
}

/// Every key of the node's TOML file with its default value: the keys that
/// have a value by default as they are, the optional ones (`node_key`,
/// `account_key`, the `[coordinators]` table) commented out. It is made
/// from the defaults themselves, so it cannot drift from them, and it
/// reads back as the default configuration.
pub fn example() -> Result<String> {
    let defaults = render(&NodeConfig::default())?;
    // Top-level keys come before the first table; the optional top-level
    // keys go with them, so uncommenting one keeps it at the top level.
    let split = defaults
        .find("\n[")
        .map(|i| i + 1)
        .unwrap_or(defaults.len());
    let (top, tables) = defaults.split_at(split);
    let coordinators = render(&CoordinatorsConfig::new(1, Vec::new()))?;
    let mut out = String::from(
        "# rigmesh node configuration: every key with its default.\n\
         # Use with `rigmesh node run --config <file>`; flags override the file.\n\n",
    );
    out.push_str(top);
    out.push_str(
        "# node_key = \"<data_dir>/node.key\"        # the libp2p key, created on first run\n\
         # account_key = \"<data_dir>/account.key\"  # the account key, created on first run\n\n",
    );
    let tables = tables.replace(
        "[network.relay]\n",
        "[network.relay]\n\
         # serve = true     # relay for peers behind NAT; unset: coordinators do, others not\n",
    );
    out.push_str(&tables.replace(
        "[supplier.prices]\n",
        "[supplier.prices]\n\
         # credits per GPU-hour by the model name NVML reports, above zero; a\n\
         # model without a price is not offered\n\
         # \"NVIDIA H100 80GB HBM3\" = \"2.49\"\n",
    ));
    out.push_str(
        "\n# The market's coordinator set, the same on every node; needed to check\n\
         # certificates, escrow leases and settle. `members` are hex public keys\n\
         # (n = 3f + 1), `admin` (and `admins`, a list) the keys whose deposits\n\
         # are accepted and whose approvals decide held deposits and withdrawals.\n\
         # [coordinators]\n",
    );
    for line in coordinators.lines().filter(|l| !l.trim().is_empty()) {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(
        "# admin = \"<hex public key>\"\n\
         # admins = [\"<hex public key>\"]             # more admin keys\n\
         # deposit_approval_above = \"10000\"        # credits; a second admin approves\n\
         # deposit_alert_above = \"1000\"            # credits; raises an operator alert\n\
         # withdrawal_review_above = \"1000\"        # credits; an admin approves first\n",
    );
    out.push_str(
        "\n# TLS for the operator listener (PEM files); required to bind\n\
         # operator_api off loopback.\n\
         # [http.operator_tls]\n\
         # cert = \"/etc/rigmesh/operator.crt\"\n\
         # key = \"/etc/rigmesh/operator.key\"\n",
    );
    out.push_str(NOTIFY_EXAMPLE);
    Ok(out)
}

/// The `[notify]` part of the example, commented out: one signed webhook
/// and one recipient taking this node's alerts.
const NOTIFY_EXAMPLE: &str = "
# Notifications (none without this table): channels, recipients and their
# routes. Secrets come from { env = \"VAR\" } or { file = \"/path\" }.
# Every key is described in the README, section Notifications.
# [notify]
# [[notify.channels]]
# name = \"ops-hook\"
# type = \"webhook\"          # email, slack, discord, telegram, webhook, twilio, sms_gateway
# url = \"https://hooks.example.com/rigmesh\"
# secret = { env = \"RIGMESH_WEBHOOK_SECRET\" }
# [[notify.recipients]]
# name = \"me\"
# audience = [\"customer\", \"supplier\", \"operators\"]
# channels = [\"ops-hook\"]
";

fn render<T: Serialize>(value: &T) -> Result<String> {
    toml::to_string(value).map_err(|e| Error::Config(format!("rendering the example: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_holds_every_key_and_reads_back_as_the_defaults() {
        let text = example().unwrap();
        let parsed: NodeConfig = toml::from_str(&text).unwrap();
        assert_eq!(parsed, NodeConfig::default());
        for key in [
            "role = ",
            "data_dir = ",
            "monitoring = ",
            "customer_api = ",
            "supplier_api = ",
            "public_api = ",
            "analytics_api = ",
            "operator_api = ",
            "[http.public]",
            "[http.customer]",
            "[http.operator]",
            "per_ip_per_minute = ",
            "max_body_bytes = ",
            "[network]",
            "listen = ",
            "bootstrap = ",
            "[network.limits]",
            "ban_threshold = ",
            "[supplier]",
            "offer_ttl_secs = ",
            "max_temperature_c = ",
            "# node_key = ",
            "# account_key = ",
            "# [coordinators]",
            "# unacked_timeout_secs = 120",
            "# settle_every_windows = 10",
            "# fee_rate = ",
            "# admin = ",
            "# admins = ",
            "# deposit_approval_above = ",
            "# deposit_alert_above = ",
            "# withdrawal_review_above = ",
            "# review_new_destinations = false",
            "[supplier.prices]\n# credits per GPU-hour",
            "# [http.operator_tls]",
            "[customer]",
            "keep_settled_secs = 600",
            "[forecast]",
            "sample_secs = 60",
            "alert_horizon_hours = 24",
        ] {
            assert!(text.contains(key), "{key:?} missing from:\n{text}");
        }
    }

    /// The customer's keep of settled leases is read from `[customer]`; a
    /// key the node does not know there is refused with its name rather
    /// than ignored.
    #[test]
    fn the_customer_section_sets_the_keep_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "role = \"customer\"\n[customer]\nkeep_settled_secs = 3600\n",
        )
        .unwrap();
        let config = NodeConfig::load(&path).unwrap();
        assert_eq!(config.customer.keep_settled_secs, 3600);
        assert_eq!(config.supplier, crate::supplier::SupplierConfig::default());

        std::fs::write(&path, "[customer]\nkeep_settled_minutes = 60\n").unwrap();
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("keep_settled_minutes"), "{err}");
        std::fs::write(&path, "[customer]\nkeep_settled_secs = -1\n").unwrap();
        assert!(NodeConfig::load(&path).is_err());
    }

    #[test]
    fn the_examples_notify_section_reads_back_once_uncommented() {
        let text = example().unwrap();
        let (_, notify) = text.split_once("# [notify]").unwrap();
        let uncommented: String = std::iter::once("[notify]")
            .chain(notify.lines().map(|l| l.strip_prefix("# ").unwrap_or(l)))
            .map(|l| format!("{}\n", l.split(" #").next().unwrap_or(l)))
            .collect();
        let config: NodeConfig = toml::from_str(&uncommented).unwrap();
        let notify = config.notify.unwrap();
        notify.check().unwrap();
        assert_eq!(notify.channels[0].name, "ops-hook");
        assert_eq!(notify.recipients[0].channels, ["ops-hook"]);
    }

    #[test]
    fn a_notify_section_that_names_a_missing_channel_is_refused_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "[[notify.recipients]]\nname = \"me\"\nchannels = [\"pager\"]\n",
        )
        .unwrap();
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("[notify]") && err.contains("pager"), "{err}");
    }

    #[test]
    fn a_file_names_only_what_it_changes_and_flags_win() {
        let config: NodeConfig = toml::from_str(
            r#"
            role = "supplier"
            data_dir = "/var/lib/rigmesh"
            [network]
            bootstrap = ["/ip4/10.0.0.1/tcp/4600/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"]
            [network.limits]
            ban_threshold = 7
            "#,
        )
        .unwrap();
        assert_eq!(config.role, Role::Supplier);
        assert_eq!(config.network.limits.ban_threshold, 7);
        assert_eq!(
            config.network.limits.ingest_queue, 4096,
            "defaults fill the rest"
        );
        let config = config.apply(Overrides {
            role: Some(Role::Customer),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            ..Overrides::default()
        });
        assert_eq!(config.role, Role::Customer);
        assert_eq!(config.network.listen.len(), 1);
        assert_eq!(config.network.bootstrap.len(), 1);
        assert_eq!(
            config.node_key_path(),
            Path::new("/var/lib/rigmesh/node.key")
        );
    }

    #[test]
    fn listener_limits_that_cannot_work_are_refused_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "[http.customer]\nper_ip_burst = 0\n").unwrap();
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("http.customer.per_ip_burst"), "{err}");
        std::fs::write(&path, "[http.public]\nallow = [\"10.0.0.0/33\"]\n").unwrap();
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("allow"), "{err}");
        std::fs::write(
            &path,
            "[http.public]\nallow = [\"192.0.2.0/24\"]\nmax_body_bytes = 1024\n",
        )
        .unwrap();
        let config = NodeConfig::load(&path).unwrap();
        assert_eq!(config.http.public.max_body_bytes, 1024);
        assert_eq!(
            config.http.public.timeout_secs, 10,
            "the public defaults fill the rest"
        );
        assert_eq!(config.http.customer, ListenerLimits::default());
    }

    #[test]
    fn unknown_keys_and_bad_sets_are_clear_errors() {
        let err = toml::from_str::<NodeConfig>("rol = \"supplier\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let config = NodeConfig {
            coordinators: Some(CoordinatorsConfig::new(1, vec![])),
            ..NodeConfig::default()
        };
        assert!(config.coordinator_set().is_err());
        assert!("miner".parse::<Role>().is_err());
    }
}
