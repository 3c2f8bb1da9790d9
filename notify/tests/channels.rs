//! Each channel end to end: an alert raised through the worker reaches a
//! real server on 127.0.0.1 in the exact shape the service expects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use base64::Engine;
use common::{alert, secret_file, self_signed, Pipeline, Recorder, SmtpServer, SmtpTls};
use hmac::{Hmac, KeyInit, Mac};
use rigmesh_notify::channel::webhook;
use rigmesh_protocol::{Severity, UnixMillis};

const WAIT: Duration = Duration::from_secs(20);

/// Fast timings, one recipient `ops` on `channels`.
fn config(channels: &str, names: &[&str]) -> String {
    format!(
        r#"
        ack_url = "https://node.example/notify/ack"
        [outbox]
        poll_ms = 20
        timeout_ms = 5000
        backoff_base_ms = 50
        [grouping]
        group_wait_ms = 10
        {channels}
        [[recipients]]
        name = "ops"
        channels = {names:?}
        "#
    )
}

fn is_key(key: &str) -> bool {
    key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn email_goes_through_smtp_with_login_subject_and_message_id() {
    let smtp = SmtpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let password = secret_file(dir.path(), "smtp-password", "s3cret-pw");
    let channels = format!(
        r#"
        [[channels]]
        name = "mail"
        type = "email"
        server = "127.0.0.1"
        port = {port}
        security = "none"
        username = "alerts"
        password = {{ file = "{password}" }}
        from = "rigmesh <alerts@rigmesh.example>"
        to = ["oncall@example.com", "boss@example.com"]
        "#,
        port = smtp.addr.port()
    );
    let pipeline = Pipeline::start(&config(&channels, &["mail"]), &dir.path().join("db"));
    pipeline
        .handle
        .raise(alert("rig.offline", Severity::Critical, 7))
        .await
        .unwrap();
    let mails = smtp.log.wait_until(WAIT, |m| !m.is_empty()).await;
    let mail = &mails[0];
    assert_eq!(mail.auth, Some(("alerts".into(), "s3cret-pw".into())));
    assert_eq!(mail.mail_from, "<alerts@rigmesh.example>");
    assert_eq!(
        mail.rcpt_to,
        vec!["<oncall@example.com>", "<boss@example.com>"]
    );
    let subject = mail.header("Subject").unwrap();
    assert!(
        subject.starts_with("[CRITICAL] rig.offline: rig.offline number 7"),
        "{subject}"
    );
    let message_id = mail.header("Message-ID").unwrap();
    let key = message_id
        .strip_prefix('<')
        .and_then(|m| m.strip_suffix("@rigmesh.example>"))
        .unwrap_or_else(|| panic!("Message-ID {message_id}"));
    assert!(is_key(key), "{message_id}");
    assert!(mail.body.contains("rig.offline number 7"), "{}", mail.body);
    assert!(
        mail.body
            .contains("Acknowledge: https://node.example/notify/ack/"),
        "{}",
        mail.body
    );
    // Recorded as delivered once the server accepted it.
    pipeline.wait_for_empty_outbox(WAIT).await;
    pipeline.stop().await;
}

/// An email channel to `server` with `security`, trusting `ca` if given.
fn email_channel(port: u16, security: &str, password: &str, ca: Option<&str>) -> String {
    let ca = ca.map_or(String::new(), |path| format!("ca_file = \"{path}\""));
    format!(
        r#"
        [[channels]]
        name = "mail"
        type = "email"
        server = "127.0.0.1"
        port = {port}
        security = "{security}"
        username = "alerts"
        password = {{ file = "{password}" }}
        {ca}
        from = "rigmesh <alerts@rigmesh.example>"
        to = ["oncall@example.com"]
        "#
    )
}

#[tokio::test]
async fn email_over_starttls_and_over_tls_logs_in_only_when_encrypted() {
    let (acceptor, pem) = self_signed();
    let dir = tempfile::tempdir().unwrap();
    let password = secret_file(dir.path(), "smtp-password", "tls-pw");
    let ca = secret_file(dir.path(), "relay-ca.pem", &pem);
    for (n, (security, tls)) in [
        ("starttls", SmtpTls::Starttls(acceptor.clone())),
        ("tls", SmtpTls::Implicit(acceptor.clone())),
    ]
    .into_iter()
    .enumerate()
    {
        let smtp = SmtpServer::start_with(tls).await;
        let channels = email_channel(smtp.addr.port(), security, &password, Some(&ca));
        let pipeline = Pipeline::start(
            &config(&channels, &["mail"]),
            &dir.path().join(format!("db-{n}")),
        );
        pipeline
            .handle
            .raise(alert("rig.offline", Severity::Critical, 10))
            .await
            .unwrap();
        let mails = smtp.log.wait_until(WAIT, |m| !m.is_empty()).await;
        assert!(mails[0].tls, "{security}: mail came in the clear");
        assert_eq!(mails[0].auth, Some(("alerts".into(), "tls-pw".into())));
        assert!(mails[0]
            .header("Subject")
            .unwrap()
            .starts_with("[CRITICAL] rig.offline"));
        pipeline.stop().await;
    }
}

#[tokio::test]
async fn an_untrusted_relay_certificate_stops_the_mail_before_the_login() {
    let (acceptor, _) = self_signed();
    let dir = tempfile::tempdir().unwrap();
    let password = secret_file(dir.path(), "smtp-password", "never-sent");
    let smtp = SmtpServer::start_with(SmtpTls::Starttls(acceptor)).await;
    // No ca_file: the self-signed certificate is not trusted.
    let channels = email_channel(smtp.addr.port(), "starttls", &password, None);
    let pipeline = Pipeline::start(&config(&channels, &["mail"]), &dir.path().join("db"));
    pipeline
        .handle
        .raise(alert("rig.offline", Severity::Critical, 11))
        .await
        .unwrap();
    let failed = pipeline
        .metrics
        .failed
        .get_or_create(&rigmesh_notify::metrics::ChannelLabel::of("mail"))
        .clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    while failed.get() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no attempt failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(smtp.log.all().is_empty(), "a mail was accepted");
    // The client asked to upgrade and, the handshake failing, said nothing
    // more: no login and no mail in the clear.
    let commands = smtp.commands.all();
    assert!(commands.contains(&"STARTTLS".to_owned()), "{commands:?}");
    assert!(
        commands.iter().all(|c| c == "EHLO" || c == "STARTTLS"),
        "{commands:?}"
    );
    let status = pipeline.handle.status().await.unwrap();
    assert_eq!(status.outbox_len, 1, "kept for a retry");
    pipeline.stop().await;
}

#[tokio::test]
async fn slack_and_discord_webhooks_get_their_json() {
    let server = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let slack = secret_file(dir.path(), "slack", &server.url("/services/T000/B000/XXXX"));
    let discord = secret_file(dir.path(), "discord", &server.url("/api/webhooks/42/tok"));
    let channels = format!(
        r#"
        [[channels]]
        name = "slack"
        type = "slack"
        url = {{ file = "{slack}" }}
        [[channels]]
        name = "discord"
        type = "discord"
        url = {{ file = "{discord}" }}
        "#
    );
    let pipeline = Pipeline::start(
        &config(&channels, &["slack", "discord"]),
        &dir.path().join("db"),
    );
    pipeline
        .handle
        .raise(alert("gpu.hot", Severity::Warning, 3))
        .await
        .unwrap();
    let got = server.log.wait_until(WAIT, |r| r.len() >= 2).await;
    let slack = got
        .iter()
        .find(|r| r.path == "/services/T000/B000/XXXX")
        .expect("slack request");
    assert_eq!(slack.method, "POST");
    assert!(slack
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json")));
    assert!(is_key(&slack.header("idempotency-key").unwrap()));
    let text = slack.json()["text"].as_str().unwrap().to_owned();
    assert!(text.starts_with("gpu.hot: gpu.hot number 3"), "{text}");
    assert!(
        text.contains("Acknowledge: https://node.example/notify/ack/"),
        "{text}"
    );

    let discord = got
        .iter()
        .find(|r| r.path == "/api/webhooks/42/tok")
        .expect("discord request");
    let body = discord.json();
    assert!(body["content"]
        .as_str()
        .unwrap()
        .contains("gpu.hot number 3"));
    assert_eq!(body["allowed_mentions"]["parse"], serde_json::json!([]));
    assert_ne!(
        discord.header("idempotency-key"),
        slack.header("idempotency-key"),
        "each channel's delivery has its own key"
    );
    pipeline.stop().await;
}

#[tokio::test]
async fn telegram_gets_send_message_with_the_bot_token_in_the_path() {
    let server = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = secret_file(dir.path(), "tg", "123456:ABC-def");
    let channels = format!(
        r#"
        [[channels]]
        name = "tg"
        type = "telegram"
        token = {{ file = "{token}" }}
        chat_id = "-100200300"
        api_base = "{base}"
        "#,
        base = server.url("")
    );
    let pipeline = Pipeline::start(&config(&channels, &["tg"]), &dir.path().join("db"));
    pipeline
        .handle
        .raise(alert("gpu.hot", Severity::Warning, 4))
        .await
        .unwrap();
    let got = server.log.wait_until(WAIT, |r| !r.is_empty()).await;
    assert_eq!(got[0].path, "/bot123456:ABC-def/sendMessage");
    let body = got[0].json();
    assert_eq!(body["chat_id"], "-100200300");
    assert!(body["text"].as_str().unwrap().contains("gpu.hot number 4"));
    assert_eq!(body["disable_web_page_preview"], true);
    pipeline.stop().await;
}

#[tokio::test]
async fn the_generic_webhook_is_signed_over_timestamp_and_body() {
    let server = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "hook-key", "shared-hmac-key");
    let channels = format!(
        r#"
        [[channels]]
        name = "hook"
        type = "webhook"
        url = "{url}"
        secret = {{ file = "{secret}" }}
        "#,
        url = server.url("/rigmesh/alerts")
    );
    let pipeline = Pipeline::start(&config(&channels, &["hook"]), &dir.path().join("db"));
    pipeline
        .handle
        .raise(alert("rig.offline", Severity::Critical, 5))
        .await
        .unwrap();
    let got = server.log.wait_until(WAIT, |r| !r.is_empty()).await;
    let request = &got[0];
    assert_eq!(request.path, "/rigmesh/alerts");
    let timestamp = request.header("x-rigmesh-timestamp").unwrap();
    let signature = request.header("x-rigmesh-signature").unwrap();
    let key = request.header("idempotency-key").unwrap();

    // Recompute the HMAC the way a receiver in any language would.
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"shared-hmac-key").unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&request.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(signature, expected);

    let now = UnixMillis::now().0 / 1_000;
    let sent_at: u64 = timestamp.parse().unwrap();
    assert!(
        now.abs_diff(sent_at) <= 60,
        "fresh timestamp {sent_at} vs {now}"
    );
    assert_eq!(
        webhook::verify(
            b"shared-hmac-key",
            &timestamp,
            &signature,
            &request.body,
            now,
            300
        ),
        Ok(())
    );
    // A replay ten minutes later, or a tampered body, is refused.
    assert!(webhook::verify(
        b"shared-hmac-key",
        &timestamp,
        &signature,
        &request.body,
        now + 600,
        300
    )
    .is_err());
    let mut tampered = request.body.to_vec();
    tampered[10] ^= 1;
    assert!(webhook::verify(
        b"shared-hmac-key",
        &timestamp,
        &signature,
        &tampered,
        now,
        300
    )
    .is_err());

    let body = request.json();
    assert_eq!(body["id"], key.as_str());
    assert_eq!(body["severity"], "critical");
    assert_eq!(body["alerts"], 1);
    assert!(body["ack_url"]
        .as_str()
        .unwrap()
        .starts_with("https://node.example/notify/ack/"));
    pipeline.stop().await;
}

#[tokio::test]
async fn twilio_gets_one_authenticated_form_post_per_number() {
    let server = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = secret_file(dir.path(), "twilio", "tw-auth-token");
    let channels = format!(
        r#"
        [[channels]]
        name = "sms"
        type = "twilio"
        api_base = "{base}"
        account_sid = "AC0123456789"
        auth_token = {{ file = "{token}" }}
        from = "+15550001"
        to = ["+15550002", "+15550003"]
        "#,
        base = server.url("")
    );
    let pipeline = Pipeline::start(&config(&channels, &["sms"]), &dir.path().join("db"));
    pipeline
        .handle
        .raise(alert("rig.offline", Severity::Critical, 6))
        .await
        .unwrap();
    let got = server.log.wait_until(WAIT, |r| r.len() >= 2).await;
    let expected_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("AC0123456789:tw-auth-token")
    );
    let mut to = Vec::new();
    let mut keys = Vec::new();
    for request in &got {
        assert_eq!(
            request.path,
            "/2010-04-01/Accounts/AC0123456789/Messages.json"
        );
        assert_eq!(request.header("authorization"), Some(expected_auth.clone()));
        assert_eq!(
            request.header("content-type").as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        let form = request.form();
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(field("From"), "+15550001");
        assert!(field("Body").starts_with("rig.offline: rig.offline number 6"));
        assert!(field("Body").contains("(ack: https://node.example/notify/ack/"));
        to.push(field("To"));
        let key = request.header("i-twilio-idempotency-token").unwrap();
        assert_eq!(request.header("idempotency-key"), Some(key.clone()));
        keys.push(key);
    }
    to.sort();
    assert_eq!(to, ["+15550002", "+15550003"]);
    keys.sort();
    assert!(
        keys[0].ends_with("-0") && keys[1].ends_with("-1"),
        "{keys:?}"
    );
    assert_eq!(
        keys[0].trim_end_matches("-0"),
        keys[1].trim_end_matches("-1")
    );
    pipeline.stop().await;
}

#[tokio::test]
async fn the_sms_gateway_gets_json_with_a_bearer_token() {
    let server = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = secret_file(dir.path(), "gw", "gw-token");
    let channels = format!(
        r#"
        [[channels]]
        name = "gw"
        type = "sms_gateway"
        url = "{url}"
        token = {{ file = "{token}" }}
        to = ["+15550009"]
        "#,
        url = server.url("/v1/sms")
    );
    let pipeline = Pipeline::start(&config(&channels, &["gw"]), &dir.path().join("db"));
    pipeline
        .handle
        .raise(alert("rig.offline", Severity::Critical, 8))
        .await
        .unwrap();
    let got = server.log.wait_until(WAIT, |r| !r.is_empty()).await;
    assert_eq!(got[0].path, "/v1/sms");
    assert_eq!(
        got[0].header("authorization").as_deref(),
        Some("Bearer gw-token")
    );
    let body = got[0].json();
    assert_eq!(body["to"], "+15550009");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .starts_with("rig.offline: rig.offline number 8"));
    assert!(got[0].header("idempotency-key").unwrap().ends_with("-0"));
    pipeline.stop().await;
}

#[tokio::test]
async fn secrets_never_show_in_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let token = secret_file(dir.path(), "tg", "999:VERY-SECRET");
    let config = rigmesh_notify::NotifyConfig::from_toml(&format!(
        r#"
        [[channels]]
        name = "tg"
        type = "telegram"
        token = {{ file = "{token}" }}
        chat_id = "1"
        "#
    ))
    .unwrap();
    let channels =
        rigmesh_notify::Channels::build(&config.channels, Duration::from_secs(1)).unwrap();
    let shown = format!("{channels:?}");
    assert!(!shown.contains("VERY-SECRET"), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
}

#[tokio::test]
async fn a_failed_delivery_names_the_channel_but_not_its_secret_url() {
    // A port nothing listens on: the connection is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let url = secret_file(
        dir.path(),
        "slack",
        &format!("http://127.0.0.1:{port}/services/T0/B0/SECRETTOKEN"),
    );
    let config = rigmesh_notify::NotifyConfig::from_toml(&format!(
        r#"
        [[channels]]
        name = "chat"
        type = "slack"
        url = {{ file = "{url}" }}
        "#
    ))
    .unwrap();
    let channels =
        rigmesh_notify::Channels::build(&config.channels, Duration::from_secs(2)).unwrap();
    let message = rigmesh_notify::Outgoing {
        key: "0".repeat(32),
        channel: "chat".into(),
        group: "g".into(),
        rule: "gpu.hot".into(),
        severity: Severity::Warning,
        subject: "s".into(),
        body: "b".into(),
        ack_url: None,
        alerts: 1,
        created_at: UnixMillis::now(),
    };
    let err = tokio::task::spawn_blocking(move || channels.get("chat").unwrap().send(&message))
        .await
        .unwrap()
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("chat"), "{text}");
    assert!(!text.contains("SECRETTOKEN"), "{text}");
    assert!(!err.is_permanent(), "a refused connection is worth a retry");
}
