//! The `secretSync` mapping an SPC author writes, and its ExternalSecret-style templates:
//! parsing and rendering must never panic, whatever the YAML or template text.
#![no_main]

use std::collections::BTreeMap;

use akeyless_csi_provider::secret::SecretBytes;
use akeyless_csi_provider::sync::mapping;
use akeyless_csi_provider::template::Template;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = mapping::parse(&text, Some("Warn"), "shop");
    if let Ok(template) = Template::parse(&text) {
        let values = BTreeMap::from([
            ("username".to_owned(), SecretBytes::new(b"app".to_vec())),
            ("password".to_owned(), SecretBytes::new(b"pw".to_vec())),
        ]);
        let _ = template.render(&values);
    }
});
