//! The driver-controlled input: `attributes`, `secrets` and `permission` of a Mount request,
//! including the `objects` YAML a pod author writes. Parsing must never panic, whatever comes.
#![no_main]

use akeyless_csi_provider::params;
use akeyless_csi_provider::proto::v1alpha1::MountRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (mode, rest) = match text.char_indices().nth(1) {
        Some((i, _)) => (text.as_bytes()[0], &text[i..]),
        None => return,
    };
    let request = if mode % 2 == 0 {
        // Raw fields, separated by NUL: what a broken or hostile caller could send.
        let mut parts = rest.splitn(3, '\0');
        MountRequest {
            attributes: parts.next().unwrap_or_default().to_owned(),
            secrets: parts.next().unwrap_or_default().to_owned(),
            permission: parts.next().unwrap_or_default().to_owned(),
            ..Default::default()
        }
    } else {
        // A well-formed request whose `objects` YAML (and tokens JSON) is the fuzz input, so
        // the YAML parser and the object checks get the depth.
        let (objects, tokens) = rest.split_once('\0').unwrap_or((rest, ""));
        let mut attributes = serde_json::Map::new();
        attributes.insert("akeylessAccessID".into(), "p-fuzz".into());
        attributes.insert("objects".into(), objects.into());
        if !tokens.is_empty() {
            attributes.insert("csi.storage.k8s.io/serviceAccount.tokens".into(), tokens.into());
        }
        MountRequest {
            attributes: serde_json::Value::Object(attributes).to_string(),
            secrets: r#"{"akeylessAccessKey":"k"}"#.to_owned(),
            permission: "420".to_owned(),
            ..Default::default()
        }
    };
    let _ = params::parse(&request);
    let _ = params::pod_hint(&request.attributes);
});
