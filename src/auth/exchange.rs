//! HTTP for the identity exchanges that precede a login: Entra ID, AWS STS and the EKS Pod
//! Identity agent, Google STS and IAM credentials, and the cloud metadata servers.
//!
//! These endpoints receive and return credentials, so: no redirects (a redirect would carry
//! the body elsewhere), bounded bodies, a timeout within the login's deadline, one retry for
//! transport failures and 5xx only, and error texts that are shortened and scrubbed of every
//! credential sent or received.

use crate::akeyless::{sanitize, transport_reason};
use std::time::Duration;

use crate::akeyless::Deadline;

/// Answers larger than this are refused (token responses are a few KiB).
const MAX_BODY: usize = 256 * 1024;
/// Attempts per exchange: a second one only after a transport failure or a 5xx/429.
const ATTEMPTS: u32 = 2;

/// Why an exchange failed, in words safe for a pod event.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{service}: {reason}")]
pub struct ExchangeError {
    /// The endpoint, e.g. `Entra ID token endpoint`.
    pub service: &'static str,
    /// The endpoint refused the identity (4xx), rather than being unavailable.
    pub rejected: bool,
    pub reason: String,
}

/// A client for the exchange endpoints.
#[derive(Debug, Clone)]
pub(crate) struct Http {
    /// Built on first use: most nodes never exchange, and building it sets up TLS.
    client: std::sync::Arc<std::sync::OnceLock<reqwest::Client>>,
    call_timeout: Duration,
}

impl Http {
    pub fn new(call_timeout: Duration) -> Self {
        Self {
            client: Default::default(),
            call_timeout,
        }
    }

    pub fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            reqwest::Client::builder()
                .user_agent(concat!("akeyless-csi-provider/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(5))
                .build()
                // The same TLS backend builds the Akeyless client; a failure here would be a
                // broken build, and the default client reports it the same way.
                .unwrap_or_default()
        })
    }

    /// Sends the request `build` makes (again for the retry) and returns the body of a 2xx.
    /// `scrub` lists the credentials in the request, never to be echoed.
    pub async fn send(
        &self,
        service: &'static str,
        build: impl Fn() -> reqwest::RequestBuilder,
        scrub: &[&str],
        deadline: Deadline,
    ) -> Result<Vec<u8>, ExchangeError> {
        let fail = |rejected, reason: String| ExchangeError {
            service,
            rejected,
            reason,
        };
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let budget = self.call_timeout.min(deadline.remaining());
            if budget.is_zero() {
                return Err(fail(
                    false,
                    "no time left before the mount's deadline".into(),
                ));
            }
            let outcome = tokio::time::timeout(budget, async {
                let response = build().send().await?;
                let status = response.status();
                let body = read_limited(response).await?;
                Ok::<_, reqwest::Error>((status, body))
            })
            .await;
            match outcome {
                Ok(Ok((status, Some(body)))) if status.is_success() => return Ok(body),
                Ok(Ok((_, None))) => {
                    return Err(fail(
                        false,
                        format!("the answer is larger than {MAX_BODY} bytes"),
                    ));
                }
                Ok(Ok((status, Some(body)))) => {
                    let reason = format!("HTTP {}: {}", status.as_u16(), message(&body, scrub));
                    let retryable = status.is_server_error() || status.as_u16() == 429;
                    if !retryable {
                        return Err(fail(status.is_client_error(), reason));
                    }
                    last = reason;
                }
                Ok(Err(e)) => last = transport_reason(&e),
                Err(_) => last = format!("no answer within {}ms", budget.as_millis()),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(100).min(deadline.remaining())).await;
            }
        }
        Err(fail(false, last))
    }
}

async fn read_limited(mut response: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_BODY {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The error of an OAuth/JSON error body (`error_description`, `error.message`, `message`,
/// `error`) or the body's start, shortened, without control characters or credentials.
fn message(body: &[u8], scrub: &[&str]) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => [
            "/error_description",
            "/error/message",
            "/message",
            "/error",
            "/Message",
        ]
        .iter()
        .find_map(|p| json.pointer(p).and_then(|v| v.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "(no error message)".to_owned()),
        Err(_) if body.is_empty() => "(empty body)".to_owned(),
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
    };
    sanitize(&text, scrub)
}

/// A field of a JSON answer, or an error naming what is missing (never the body).
pub(crate) fn json_field(
    service: &'static str,
    body: &[u8],
    pointer: &str,
) -> Result<String, ExchangeError> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|json| json.pointer(pointer)?.as_str().map(str::to_owned))
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ExchangeError {
            service,
            rejected: false,
            reason: format!("the answer has no {}", pointer.trim_start_matches('/')),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_picked_scrubbed_and_bounded() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS700016: bad assertion eyJsecret.token\r\nTrace"}"#;
        assert_eq!(
            message(body, &["eyJsecret.token"]),
            "AADSTS700016: bad assertion [redacted]  Trace"
        );
        assert_eq!(message(b"", &[]), "(empty body)");
        assert!(message("x".repeat(2000).as_bytes(), &[]).chars().count() <= 301);
        assert_eq!(
            message(br#"{"error":{"code":400,"message":"bad audience"}}"#, &[]),
            "bad audience"
        );
    }

    #[test]
    fn json_fields_never_echo_the_body() {
        let err = json_field("STS", br#"{"token_secret":"abc"}"#, "/access_token").unwrap_err();
        assert!(!err.to_string().contains("abc"));
        assert_eq!(
            json_field("STS", br#"{"access_token":"t"}"#, "/access_token").unwrap(),
            "t"
        );
    }
}
