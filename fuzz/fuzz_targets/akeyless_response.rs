//! What an Akeyless URL (chosen by a pod author) may answer: decoding and rendering of any body
//! must never panic, and error texts must stay bounded.
#![no_main]

use std::collections::HashMap;

use akeyless_csi_provider::akeyless::{self, AuthResponse, ItemRef};
use akeyless_csi_provider::fetch::{Fetched, issue};
use akeyless_csi_provider::params::{Encoding, ObjectSpec, Shape};
use akeyless_csi_provider::render::{self, VersionKey, pem};
use akeyless_csi_provider::secret::SecretBytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = akeyless::decode_json::<AuthResponse>("auth", data);
    let message = akeyless::server_message(data, &["fuzz-secret"]);
    assert!(message.chars().count() <= 301);

    let names = vec!["/a".to_owned(), "/b".to_owned()];
    if let Ok(map) = akeyless::decode_json::<serde_json::Map<String, serde_json::Value>>("get-secret-value", data) {
        let _ = akeyless::secret_values(map, &names);
    }

    // Render a value (the input after the first NUL) through a property path and an encoding
    // (taken from the input before it).
    let (head, value) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let head = String::from_utf8_lossy(head);
    let encoding = match head.len() % 3 {
        0 => Encoding::Utf8,
        1 => Encoding::Base64,
        _ => Encoding::Hex,
    };
    let object = ObjectSpec {
        secret_path: "/a".into(),
        file_name: "a".into(),
        version: None,
        property: (!head.is_empty()).then(|| head.to_string()),
        encoding,
        mode: 0o644,
        kind: None,
        optional: false,
        shape: Shape::Single,
    };
    let values = Fetched::from_static_values(HashMap::from([(
        ItemRef {
            name: "/a".into(),
            version: None,
        },
        SecretBytes::new(value.to_vec()),
    )]));
    let _ = render::render(&[object], &values, &VersionKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "fuzz").unwrap());

    // Certificates, keys and SSH certificates as an Akeyless URL may send them.
    let text = String::from_utf8_lossy(value);
    let _ = pem::Bundle::assemble(&text, None);
    let _ = pem::private_key_public_bits(&text);
    let _ = issue::parse_ssh_certificate(&text);
});
