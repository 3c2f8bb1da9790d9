//! The node's customer API as the CLI calls it: where the node is, the
//! token read from its data directory, and one way to send a request and
//! read the JSON answer with its status.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use rigmesh_node::api::tokens::{read_token, Bootstrap};
use rigmesh_protocol::Id;

/// The customer API's default address.
pub(crate) const CUSTOMER_API: &str = "127.0.0.1:9610";
/// The supplier API's default address.
pub(crate) const SUPPLIER_API: &str = "127.0.0.1:9611";
/// The public API's default address.
pub(crate) const PUBLIC_API: &str = "127.0.0.1:9620";
/// The operator API's default address.
pub(crate) const OPERATOR_API: &str = "127.0.0.1:9630";

/// Where the node is, and how to print.
#[derive(Debug, clap::Args)]
pub(crate) struct NodeArgs {
    /// The node's data directory (its bootstrap API token is read from
    /// `<dir>/api/customer.token`, or supplier.token / operator.token).
    #[arg(long, default_value = "rigmesh-data", value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
    /// A file holding the API token to use instead of the bootstrap one
    /// (one made with `rigmesh token create`).
    #[arg(long, env = "RIGMESH_TOKEN_FILE", value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// The node's customer API address.
    #[arg(long, default_value = "127.0.0.1:9610", value_name = "ADDR")]
    pub(crate) api: SocketAddr,
    /// Print JSON instead of text (for scripts).
    #[arg(long)]
    pub(crate) json: bool,
}

/// A connection to the customer API.
pub(crate) struct Api {
    base: String,
    token: String,
    agent: ureq::Agent,
}

/// A status and its JSON body; a body that is not JSON (a plain-text
/// refusal) reads as `{"reason": <text>}`.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: serde_json::Value,
    /// The `next-cursor` header of a paged listing: where the next page
    /// starts; `None` on the last page.
    pub(crate) next: Option<String>,
}

impl Answer {
    /// True for a 2xx status.
    pub(crate) fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The reason the node gave, or the status.
    pub(crate) fn reason(&self) -> String {
        self.body
            .get("reason")
            .and_then(|r| r.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| format!("status {}", self.status))
    }

    /// The body as `T`, or the node's refusal as an error.
    pub(crate) fn into<T: serde::de::DeserializeOwned>(self, what: &str) -> anyhow::Result<T> {
        if !self.ok() {
            anyhow::bail!("{what}: {} ({})", self.reason(), self.status);
        }
        serde_json::from_value(self.body).with_context(|| format!("reading {what}"))
    }
}

impl Api {
    /// Reads the token of the node in `node.data_dir`.
    pub(crate) fn connect(node: &NodeArgs) -> anyhow::Result<Self> {
        Self::connect_as(node, Bootstrap::Customer, node.api)
    }

    /// A client of an API that needs no token (the public one).
    pub(crate) fn open(addr: SocketAddr) -> Self {
        Api {
            base: format!("http://{addr}"),
            token: String::new(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
        }
    }

    /// [`Api::connect_as`] the `audience` API: at `--api` when it was
    /// given, else at `default` (`--api` defaults to the customer API).
    pub(crate) fn connect_to(
        node: &NodeArgs,
        audience: Bootstrap,
        default: &str,
    ) -> anyhow::Result<Self> {
        let customer_default: SocketAddr = CUSTOMER_API.parse()?;
        let addr = if node.api == customer_default {
            default.parse()?
        } else {
            node.api
        };
        Self::connect_as(node, audience, addr)
    }

    /// Reads `--token-file`, or else the `audience` bootstrap token of the
    /// node in `node.data_dir`, to call its API at `addr`.
    pub(crate) fn connect_as(
        node: &NodeArgs,
        audience: Bootstrap,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let token = match &node.token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the token in {}", path.display()))?
                .trim()
                .to_string(),
            None => read_token(&node.data_dir, audience).with_context(|| {
                format!(
                    "reading the {} API token of the node in {} (is --data-dir the node's?)",
                    audience.name(),
                    node.data_dir.display()
                )
            })?,
        };
        Ok(Api {
            base: format!("http://{addr}"),
            token,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
        })
    }

    fn read(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Answer> {
        let mut response = response
            .with_context(|| format!("asking the node at {} (is it running?)", self.base))?;
        let status = response.status().as_u16();
        let next = response
            .headers()
            .get("next-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = response
            .body_mut()
            .read_to_string()
            .context("reading the node's answer")?;
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| serde_json::json!({"reason": text.trim()}));
        Ok(Answer { status, body, next })
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// `GET path`.
    pub(crate) fn get(&self, path: &str) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        self.read(
            self.agent
                .get(&url)
                .header("Authorization", &self.auth())
                .call(),
        )
    }

    /// `DELETE path`.
    pub(crate) fn delete(&self, path: &str) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        self.read(
            self.agent
                .delete(&url)
                .header("Authorization", &self.auth())
                .call(),
        )
    }

    /// `POST path` with a JSON body.
    pub(crate) fn post(&self, path: &str, body: &impl serde::Serialize) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        self.read(
            self.agent
                .post(&url)
                .header("Authorization", &self.auth())
                .send_json(body),
        )
    }

    /// `PUT path` with a JSON body.
    pub(crate) fn put(&self, path: &str, body: &impl serde::Serialize) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        self.read(
            self.agent
                .put(&url)
                .header("Authorization", &self.auth())
                .send_json(body),
        )
    }

    /// The lease a full id or a unique prefix of one names, among this
    /// node's leases.
    pub(crate) fn lease_id(&self, text: &str) -> anyhow::Result<Id> {
        let text = text.trim().to_ascii_lowercase();
        if let Ok(id) = text.parse::<Id>() {
            return Ok(id);
        }
        if text.is_empty() || !text.chars().all(|c| c.is_ascii_hexdigit()) {
            anyhow::bail!("{text:?} is not a lease id (hex, as `rigmesh account` lists them)");
        }
        let account: rigmesh_node::customer::report::AccountReport =
            self.get("/v1/account")?.into("the node's leases")?;
        let found: Vec<Id> = account
            .leases
            .iter()
            .map(|l| l.lease)
            .filter(|id| id.to_string().starts_with(&text))
            .collect();
        match found.as_slice() {
            [id] => Ok(*id),
            [] => anyhow::bail!("no lease on this node starts with {text}"),
            many => anyhow::bail!(
                "{} leases start with {text}; give more of the id",
                many.len()
            ),
        }
    }
}
