//! Real servers for the channel tests: an HTTP recorder (axum) and a small
//! SMTP server, both on 127.0.0.1:0, each recording what it received and
//! letting a test wait for it without sleeping.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// One HTTP request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Form fields of an `application/x-www-form-urlencoded` body.
    pub fn form(&self) -> Vec<(String, String)> {
        url_decode_pairs(&self.text())
    }
}

fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
                out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).expect("utf-8 form value")
}

fn url_decode_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

/// Something that records items and lets tests wait for them.
#[derive(Clone)]
pub struct Log<T> {
    items: Arc<Mutex<Vec<T>>>,
    changed: watch::Sender<usize>,
}

impl<T: Clone> Log<T> {
    fn new() -> Self {
        Log {
            items: Arc::new(Mutex::new(Vec::new())),
            changed: watch::channel(0).0,
        }
    }

    fn push(&self, item: T) {
        let len = {
            let mut items = self.items.lock().unwrap();
            items.push(item);
            items.len()
        };
        self.changed.send_replace(len);
    }

    pub fn all(&self) -> Vec<T> {
        self.items.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what was received, at most `limit`.
    pub async fn wait_until(&self, limit: Duration, done: impl Fn(&[T]) -> bool) -> Vec<T> {
        let mut changes = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let items = self.all();
            if done(&items) {
                return items;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                panic!(
                    "gave up after {limit:?} waiting; {} received so far",
                    items.len()
                );
            }
        }
    }
}

/// The delay of first attempts, and the keys already seen.
type SlowFirst = (Duration, HashSet<String>);

/// How the recorder answers.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    pub log: Log<Received>,
    status: Arc<AtomicU16>,
    /// The first request of each idempotency key listed here is answered
    /// only after this delay (longer than the client's timeout).
    slow_first: Arc<Mutex<Option<SlowFirst>>>,
    /// Every request is answered only after this many milliseconds.
    latency_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let recorder = Recorder {
            addr: listener.local_addr().unwrap(),
            log: Log::new(),
            status: Arc::new(AtomicU16::new(200)),
            slow_first: Arc::new(Mutex::new(None)),
            latency_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        let app = axum::Router::new()
            .fallback(record)
            .with_state(recorder.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        recorder
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn answer_with(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Answers every request only after `latency`.
    pub fn answer_after(&self, latency: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// Delays the first request of every key starting with 0 to 3.
    pub fn slow_first_attempt(&self, delay: Duration) {
        *self.slow_first.lock().unwrap() = Some((delay, HashSet::new()));
    }
}

async fn record(
    State(recorder): State<Recorder>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    recorder.log.push(Received {
        method: method.to_string(),
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
    });
    let delay = {
        let mut slow = recorder.slow_first.lock().unwrap();
        match slow.as_mut() {
            // Only keys starting with 0-3: a quarter of the messages.
            Some((delay, seen)) if key.starts_with(['0', '1', '2', '3']) => {
                seen.insert(key).then_some(*delay)
            }
            _ => None,
        }
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let latency = recorder.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    StatusCode::from_u16(recorder.status.load(Ordering::SeqCst)).unwrap()
}

/// One mail as the SMTP server received it.
#[derive(Debug, Clone)]
pub struct Mail {
    /// True when the session was encrypted when the mail came.
    pub tls: bool,
    /// Login, and whether it came over TLS.
    pub auth: Option<(String, String)>,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Mail {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the SMTP server secures its sessions.
#[derive(Clone)]
pub enum SmtpTls {
    /// Plain text only.
    None,
    /// Plain text, upgraded when the client says STARTTLS (then required
    /// for AUTH and MAIL).
    Starttls(tokio_rustls::TlsAcceptor),
    /// TLS from the first byte.
    Implicit(tokio_rustls::TlsAcceptor),
}

/// A self-signed certificate for 127.0.0.1: the acceptor for the server
/// and the certificate's PEM for the client to trust.
pub fn self_signed() -> (tokio_rustls::TlsAcceptor, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        cert.key_pair.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    (
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
        pem,
    )
}

/// A small SMTP server: EHLO, STARTTLS, AUTH PLAIN, MAIL, RCPT, DATA, QUIT.
#[derive(Clone)]
pub struct SmtpServer {
    pub addr: SocketAddr,
    pub log: Log<Mail>,
    /// The verb of every command received (`EHLO`, `STARTTLS`, `AUTH`...),
    /// prefixed with `tls ` when it came encrypted.
    pub commands: Log<String>,
}

impl SmtpServer {
    pub async fn start() -> SmtpServer {
        Self::start_with(SmtpTls::None).await
    }

    pub async fn start_with(tls: SmtpTls) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = SmtpServer {
            addr: listener.local_addr().unwrap(),
            log: Log::new(),
            commands: Log::new(),
        };
        let log = server.log.clone();
        let commands = server.commands.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let log = (log.clone(), commands.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let result = match tls {
                        SmtpTls::None => session(stream, log, false, false, true).await.map(drop),
                        SmtpTls::Implicit(acceptor) => match acceptor.accept(stream).await {
                            Ok(secure) => session(secure, log, true, false, true).await.map(drop),
                            Err(e) => Err(e),
                        },
                        SmtpTls::Starttls(acceptor) => {
                            match session(stream, log.clone(), false, true, true).await {
                                Ok(Some(plain)) => match acceptor.accept(plain).await {
                                    Ok(secure) => {
                                        session(secure, log, true, false, false).await.map(drop)
                                    }
                                    Err(e) => Err(e),
                                },
                                Ok(None) => Ok(()),
                                Err(e) => Err(e),
                            }
                        }
                    };
                    if let Err(e) = result {
                        eprintln!("smtp session: {e}");
                    }
                });
            }
        });
        server
    }
}

/// Runs one SMTP session over `stream`, greeting first if `greet` (not
/// after STARTTLS). With `offer_starttls`, the stream is handed back when
/// the client asks to upgrade (and AUTH or MAIL before that are refused).
async fn session<S>(
    stream: S,
    (log, commands): (Log<Mail>, Log<String>),
    tls: bool,
    offer_starttls: bool,
    greet: bool,
) -> std::io::Result<Option<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read);
    if greet {
        write.write_all(b"220 test.local ESMTP\r\n").await?;
        write.flush().await?;
    }
    let mut mail = Mail {
        tls,
        auth: None,
        mail_from: String::new(),
        rcpt_to: Vec::new(),
        headers: Vec::new(),
        body: String::new(),
    };
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        let verb = upper.split([' ', ':']).next().unwrap_or_default();
        commands.push(if tls {
            format!("tls {verb}")
        } else {
            verb.to_owned()
        });
        let must_upgrade = offer_starttls && !tls;
        if upper.starts_with("EHLO") {
            if must_upgrade {
                write
                    .write_all(b"250-test.local\r\n250 STARTTLS\r\n")
                    .await?;
            } else {
                write
                    .write_all(b"250-test.local\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n")
                    .await?;
            }
        } else if upper == "STARTTLS" && must_upgrade {
            write.write_all(b"220 2.0.0 ready to start TLS\r\n").await?;
            write.flush().await?;
            return Ok(Some(lines.into_inner().unsplit(write)));
        } else if must_upgrade && (upper.starts_with("AUTH") || upper.starts_with("MAIL")) {
            write
                .write_all(b"530 5.7.0 must issue a STARTTLS command first\r\n")
                .await?;
        } else if upper.starts_with("AUTH PLAIN ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(command[11..].trim())
                .expect("base64 credentials");
            let parts: Vec<String> = decoded
                .split(|b| *b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            mail.auth = Some((parts[1].clone(), parts[2].clone()));
            write.write_all(b"235 2.7.0 accepted\r\n").await?;
        } else if upper.starts_with("MAIL FROM:") {
            mail.mail_from = command[10..].trim().to_owned();
            write.write_all(b"250 ok\r\n").await?;
        } else if upper.starts_with("RCPT TO:") {
            mail.rcpt_to.push(command[8..].trim().to_owned());
            write.write_all(b"250 ok\r\n").await?;
        } else if upper == "DATA" {
            write.write_all(b"354 go ahead\r\n").await?;
            let mut data = Vec::new();
            loop {
                line.clear();
                lines.read_line(&mut line).await?;
                if line == ".\r\n" || line.is_empty() {
                    break;
                }
                // Undo dot-stuffing.
                let content = line.strip_prefix('.').unwrap_or(&line);
                data.push(content.trim_end_matches(['\r', '\n']).to_owned());
            }
            let split = data.iter().position(String::is_empty).unwrap_or(data.len());
            let mut headers: Vec<(String, String)> = Vec::new();
            for raw in &data[..split] {
                if raw.starts_with([' ', '\t']) {
                    if let Some(last) = headers.last_mut() {
                        last.1.push(' ');
                        last.1.push_str(raw.trim());
                    }
                } else if let Some((k, v)) = raw.split_once(':') {
                    headers.push((k.trim().to_owned(), v.trim().to_owned()));
                }
            }
            mail.headers = headers;
            mail.body = data[split.min(data.len())..].join("\n");
            log.push(mail.clone());
            write.write_all(b"250 2.0.0 queued\r\n").await?;
        } else if upper == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            write.flush().await?;
            return Ok(None);
        } else if upper == "RSET" || upper == "NOOP" {
            write.write_all(b"250 ok\r\n").await?;
        } else {
            write.write_all(b"502 not implemented\r\n").await?;
        }
        write.flush().await?;
    }
}

/// Writes `value` to a new file in `dir` and returns its path, for
/// secrets given as files.
pub fn secret_file(dir: &std::path::Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path.display().to_string()
}

/// A notifier and its worker over a sled directory, running on the wall
/// clock.
pub struct Pipeline {
    pub handle: rigmesh_notify::NotifyHandle,
    pub metrics: rigmesh_notify::NotifyMetrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Pipeline {
    pub fn start(config: &str, dir: &std::path::Path) -> Pipeline {
        Self::start_with_clock(config, dir, rigmesh_notify::SystemClock)
    }

    pub fn start_with_clock(
        config: &str,
        dir: &std::path::Path,
        clock: impl rigmesh_notify::Clock,
    ) -> Pipeline {
        let config = rigmesh_notify::NotifyConfig::from_toml(config).unwrap();
        let store = rigmesh_ledger::SledStore::open(dir).unwrap();
        let metrics = rigmesh_notify::NotifyMetrics::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (handle, task) = rigmesh_notify::worker::start(
            config,
            store,
            rigmesh_protocol::PublicKey([9; 32]),
            clock,
            metrics.clone(),
            async move {
                let _ = stopped.await;
            },
        )
        .unwrap();
        Pipeline {
            handle,
            metrics,
            stop: Some(stop),
            task,
        }
    }

    /// Waits until nothing waits in the outbox: polls the worker's status
    /// (a command answered by the worker itself), at most `limit`.
    pub async fn wait_for_empty_outbox(&self, limit: Duration) -> rigmesh_notify::Status {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let status = self.handle.status().await.unwrap();
            if status.outbox_len == 0 {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "outbox still holds {} after {limit:?}",
                status.outbox_len
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the worker and waits until it has let go of its store.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap();
    }
}

/// An alert for the operators.
pub fn alert(
    rule: &str,
    severity: rigmesh_protocol::Severity,
    subject: u32,
) -> rigmesh_protocol::Alert {
    rigmesh_protocol::Alert {
        version: 1,
        issuer: rigmesh_protocol::PublicKey([1; 32]),
        severity,
        audience: rigmesh_protocol::Audience::Operators,
        rule: rule.into(),
        about: None,
        subject: Some(rigmesh_protocol::Id(
            *blake3::hash(&subject.to_le_bytes()).as_bytes(),
        )),
        message: format!("{rule} number {subject}"),
        created_at: rigmesh_protocol::UnixMillis::now(),
    }
}
