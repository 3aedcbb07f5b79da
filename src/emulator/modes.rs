//! Answers the Akeyless API definition leaves open, chosen by the test (`POST /__emulator/modes`):
//! the provider must handle each of them, so the emulator can give each.
//!
//! JSON form: `{"missing_name": "omitted", "not_static": "not_found", "always_paginate": true,
//! "producer_delay_ms": 1500}`; absent fields keep their defaults.

use serde::{Deserialize, Serialize};

/// How a command answers for one name it cannot serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// 400 `invalid request body: …` for the whole request.
    Rejected,
    /// 404 for the whole request, naming the item.
    NotFound,
    /// 200 with the other names' values and nothing for this one.
    Omitted,
}

/// The emulator's choices where the real service's behaviour is not documented.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Modes {
    /// `/get-secret-value` with a name that does not exist (default: 404).
    pub missing_name: Answer,
    /// `/get-secret-value` with a name that is not a static secret (default: 400).
    pub not_static: Answer,
    /// `/list-items` answers in pages of `list_page_size` even with `auto-pagination: enabled`
    /// (default: one page).
    pub always_paginate: bool,
    /// How long a dynamic secret's producer takes to create credentials. Akeyless waits for it
    /// up to the request's `timeout` (seconds, default 15) and fails after that, without
    /// credentials; the credentials are created whether or not the client is still there.
    pub producer_delay_ms: u64,
}

impl Default for Modes {
    fn default() -> Self {
        Self {
            missing_name: Answer::NotFound,
            not_static: Answer::Rejected,
            always_paginate: false,
            producer_delay_ms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_form_with_defaults() {
        let modes: Modes = serde_json::from_str(r#"{"missing_name":"omitted"}"#).unwrap();
        assert_eq!(
            modes,
            Modes {
                missing_name: Answer::Omitted,
                ..Modes::default()
            }
        );
        assert!(serde_json::from_str::<Modes>(r#"{"missing":"omitted"}"#).is_err());
    }
}
