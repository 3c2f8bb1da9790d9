//! The one HTTP client setup every HTTP channel shares, and how an answer
//! becomes success or a delivery error.

use std::time::Duration;

use ureq::http::Response;
use ureq::Agent;

use crate::error::{Error, Result};

/// Longest part of an error answer kept in a delivery error.
const MAX_ERROR_BODY: u64 = 512;

/// An agent with a whole-request timeout, no redirects (a webhook that
/// redirects is misconfigured, and a POST must not turn into a GET) and
/// HTTP error statuses returned as answers so they can be classified.
pub(crate) fn agent(timeout: Duration) -> Agent {
    Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// Success for 2xx; otherwise a delivery error that is permanent for
/// 4xx other than 408 (timeout) and 429 (rate limit).
pub(crate) fn check(
    channel: &str,
    result: std::result::Result<Response<ureq::Body>, ureq::Error>,
) -> Result<()> {
    let mut response = result.map_err(|e| Error::transient(channel, e.to_string()))?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_ERROR_BODY)
        .read_to_string()
        .unwrap_or_default();
    let reason = format!("HTTP {status}: {}", body.trim());
    if (400..500).contains(&status) && status != 408 && status != 429 {
        Err(Error::permanent(channel, reason))
    } else {
        Err(Error::transient(channel, reason))
    }
}
