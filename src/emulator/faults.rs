//! Fault injection: make chosen API calls fail the way networks and services fail.
//!
//! JSON form (for `POST /__emulator/faults`):
//! `{"endpoint": "/get-secret-value", "kind": {"type": "status", "status": 503, "retry_after_secs": 2}, "times": 3}`;
//! `endpoint` absent or null = every API endpoint, `times` absent or null = every request.
//! Kinds: `{"type":"status","status":N,"retry_after_secs":S?}`, `{"type":"delay","ms":N}`,
//! `{"type":"reset"}`, `{"type":"truncated"}`, `{"type":"malformed"}`,
//! `{"type":"slow_body","ms_per_chunk":N}`, and, for requests that act (issue a lease or a
//! certificate) before their answer is lost: `{"type":"reset_after"}`,
//! `{"type":"delay_after","ms":N}`.

use serde::{Deserialize, Serialize};

/// A fault to inject into matching API requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// `/get-secret-value` (the leading `/` is optional); `None` matches every API endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    pub kind: FaultKind,
    /// How many requests this fault applies to; `None` = all of them.
    #[serde(default)]
    pub times: Option<u32>,
}

/// What happens to a faulted request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with this status and an Akeyless-shaped `{"error": …}` body (and a
    /// `Retry-After` header when `retry_after_secs` is set) without processing the request.
    Status {
        status: u16,
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// Hang this long, then process the request normally.
    Delay { ms: u64 },
    /// Close the connection without sending a response.
    Reset,
    /// Process the request, then answer 200 with the first half of the real JSON body
    /// (a well-framed HTTP response whose JSON is cut off).
    Truncated,
    /// Answer 200 with an HTML page instead of JSON, without processing the request.
    Malformed,
    /// Process the request, then send the real body in small chunks, waiting before each.
    SlowBody { ms_per_chunk: u64 },
    /// Process the request (e.g. issue credentials), then close the connection without
    /// answering: the answer is lost after the work was done.
    ResetAfter,
    /// Process the request, then wait this long before answering (past a client's timeout).
    DelayAfter { ms: u64 },
}

impl Fault {
    /// A fault on every request of every endpoint; narrow it with [`Fault::on`] and
    /// [`Fault::times`].
    pub fn new(kind: FaultKind) -> Fault {
        Fault {
            endpoint: None,
            kind,
            times: None,
        }
    }

    /// Only requests to this endpoint (`"/auth"`, `"get-secret-value"`, …).
    pub fn on(mut self, endpoint: &str) -> Fault {
        self.endpoint = Some(endpoint.to_owned());
        self
    }

    /// Only the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Fault {
        self.times = Some(n);
        self
    }

    fn matches(&self, endpoint: &str) -> bool {
        match &self.endpoint {
            None => true,
            Some(wanted) => wanted.trim_start_matches('/') == endpoint.trim_start_matches('/'),
        }
    }
}

/// The active faults, in the order they were added.
#[derive(Debug, Default)]
pub(crate) struct FaultQueue(Vec<Fault>);

impl FaultQueue {
    pub(crate) fn push(&mut self, fault: Fault) {
        if fault.times != Some(0) {
            self.0.push(fault);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    pub(crate) fn list(&self) -> Vec<Fault> {
        self.0.clone()
    }

    /// The first fault matching `endpoint`, consuming one of its `times`.
    pub(crate) fn take(&mut self, endpoint: &str) -> Option<FaultKind> {
        let index = self.0.iter().position(|fault| fault.matches(endpoint))?;
        let fault = &mut self.0[index];
        let kind = fault.kind.clone();
        if let Some(times) = &mut fault.times {
            *times = times.saturating_sub(1);
            if *times == 0 {
                self.0.remove(index);
            }
        }
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_apply_in_order_and_are_consumed() {
        let mut queue = FaultQueue::default();
        queue.push(Fault::new(FaultKind::Reset).on("/auth").times(1));
        queue.push(Fault::new(FaultKind::Malformed).times(2));
        queue.push(Fault::new(FaultKind::Truncated).times(0));
        assert_eq!(queue.take("/get-secret-value"), Some(FaultKind::Malformed));
        assert_eq!(queue.take("/auth"), Some(FaultKind::Reset));
        assert_eq!(queue.take("/auth"), Some(FaultKind::Malformed));
        assert_eq!(queue.take("/auth"), None);
    }

    #[test]
    fn fault_json_form() {
        let fault: Fault = serde_json::from_str(
            r#"{"endpoint":"get-secret-value","kind":{"type":"status","status":503},"times":2}"#,
        )
        .unwrap();
        assert_eq!(
            fault,
            Fault::new(FaultKind::Status {
                status: 503,
                retry_after_secs: None
            })
            .on("get-secret-value")
            .times(2)
        );
        assert!(fault.matches("/get-secret-value"));
        let reset: Fault = serde_json::from_str(r#"{"kind":{"type":"reset"}}"#).unwrap();
        assert_eq!(reset, Fault::new(FaultKind::Reset));
        let after: Fault =
            serde_json::from_str(r#"{"kind":{"type":"delay_after","ms":5}}"#).unwrap();
        assert_eq!(after, Fault::new(FaultKind::DelayAfter { ms: 5 }));
        let text =
            serde_json::to_string(&Fault::new(FaultKind::SlowBody { ms_per_chunk: 5 })).unwrap();
        assert!(
            text.contains(r#""type":"slow_body","ms_per_chunk":5"#),
            "{text}"
        );
    }
}
