//! Email over SMTP (lettre, rustls). The idempotency key becomes the
//! `Message-ID` (`<key@sender-domain>`), the header mail clients and
//! list servers already use to drop a message they have seen, so a retry
//! after a crash is recognisable as the same mail.

use std::fmt;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};

use crate::config::{EmailConfig, SmtpSecurity};
use crate::error::{Error, Result};
use crate::message::{severity_name, Outgoing};

/// An SMTP relay with a sender and its recipients.
pub struct EmailChannel {
    transport: SmtpTransport,
    from: Mailbox,
    to: Vec<Mailbox>,
    /// Right-hand side of Message-IDs: the sender's domain.
    domain: String,
}

impl fmt::Debug for EmailChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The transport holds the login; show only the addresses.
        f.debug_struct("EmailChannel")
            .field("from", &self.from.to_string())
            .field("to", &self.to.len())
            .finish_non_exhaustive()
    }
}

fn mailbox(what: &str, text: &str) -> Result<Mailbox> {
    text.parse()
        .map_err(|e| Error::Config(format!("email {what} {text:?}: {e}")))
}

impl EmailChannel {
    pub(crate) fn new(config: &EmailConfig, timeout: Duration) -> Result<Self> {
        let from = mailbox("from", &config.from)?;
        let to = config
            .to
            .iter()
            .map(|t| mailbox("to", t))
            .collect::<Result<Vec<_>>>()?;
        if to.is_empty() {
            return Err(Error::Config(
                "an email channel needs a `to` address".into(),
            ));
        }
        let extra_root = match &config.ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| Error::Config(format!("email ca_file {}: {e}", path.display())))?;
                Some(
                    Certificate::from_pem(&pem).map_err(|e| {
                        Error::Config(format!("email ca_file {}: {e}", path.display()))
                    })?,
                )
            }
            None => None,
        };
        let tls = |server: &str| {
            let mut builder = TlsParameters::builder(server.to_owned());
            if let Some(root) = extra_root.clone() {
                builder = builder.add_root_certificate(root);
            }
            builder
                .build_rustls()
                .map_err(|e| Error::Config(format!("TLS for {server}: {e}")))
        };
        let (tls, default_port) = match config.security {
            SmtpSecurity::Starttls => (Tls::Required(tls(&config.server)?), 587),
            SmtpSecurity::Tls => (Tls::Wrapper(tls(&config.server)?), 465),
            SmtpSecurity::None => (Tls::None, 25),
        };
        let mut builder = SmtpTransport::builder_dangerous(config.server.clone())
            .port(config.port.unwrap_or(default_port))
            .tls(tls)
            .timeout(Some(timeout));
        match (&config.username, &config.password) {
            (Some(user), Some(password)) => {
                builder = builder.credentials(Credentials::new(
                    user.clone(),
                    password.load()?.expose().to_owned(),
                ));
            }
            (None, None) => {}
            _ => {
                return Err(Error::Config(
                    "an email channel needs both username and password, or neither".into(),
                ))
            }
        }
        let domain = from.email.domain().to_owned();
        Ok(EmailChannel {
            transport: builder.build(),
            from,
            to,
            domain,
        })
    }

    pub(crate) fn send(&self, name: &str, message: &Outgoing) -> Result<()> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(format!(
                "[{}] {}",
                severity_name(message.severity).to_uppercase(),
                message.subject
            ))
            .message_id(Some(format!("<{}@{}>", message.key, self.domain)))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let mut body = message.body.clone();
        if let Some(url) = &message.ack_url {
            body.push_str("\n\nAcknowledge: ");
            body.push_str(url);
        }
        body.push_str(&format!("\n\n-- \nrigmesh alert group {}\n", message.group));
        let email = builder
            .body(body)
            .map_err(|e| Error::permanent(name, format!("cannot build the message: {e}")))?;
        self.transport.send(&email).map(|_| ()).map_err(|e| {
            if e.is_permanent() {
                Error::permanent(name, e.to_string())
            } else {
                Error::transient(name, e.to_string())
            }
        })
    }
}
