//! Property tests of the configuration loader: whatever a file says, the
//! loader answers (a configuration or problems), never panics, and places
//! every problem in the file it read, at a line that exists.

use std::path::Path;

use proptest::prelude::*;

use super::{check_device_id, check_endpoint, CollectorConfig, NoProtocolConfig};

/// A file the loader accepts, edited by the tests.
const VALID: &str = "\
collector:
  id: c1
kafka:
  brokers: k:9092
  topic: t
batch:
  interval: 500ms
schedule:
  interval: 2s
devices:
  - id: d1
    endpoint: opc.tcp://h:4840
    interval: 1s
  - &second
    id: d2
    endpoint: opc.tcp://[::1]:4841
";

/// One edit: insert, delete or replace a byte, or cut the file there.
fn apply(text: &mut Vec<u8>, at: prop::sample::Index, byte: u8, op: u8) {
    let i = at.index(text.len() + 1);
    match op {
        0 => text.insert(i, byte),
        1 if i < text.len() => {
            text.remove(i);
        }
        2 if i < text.len() => text[i] = byte,
        _ => text.truncate(i),
    }
}

/// Bytes that matter to YAML and to our fields, and some that should not
/// be there at all.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        prop::sample::select(b":-&*[]{}#\n '\"!|>%@`,?.0123456789sm".to_vec()),
        any::<u8>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Up to six random edits of a valid file: a configuration whose
    /// devices all have valid ids and endpoints, or problems each with a
    /// message, the file, and a line of it.
    #[test]
    fn any_edit_is_judged_and_placed(
        edits in prop::collection::vec((any::<prop::sample::Index>(), byte(), 0u8..4), 1..6)
    ) {
        let mut bytes = VALID.as_bytes().to_vec();
        for (at, b, op) in edits {
            apply(&mut bytes, at, b, op);
        }
        let text = String::from_utf8_lossy(&bytes);
        // Lines as YAML counts them: a lone CR breaks a line too.
        let lines = text.replace("\r\n", "\n").replace('\r', "\n").lines().count().max(1);
        let path = Path::new("edited.yaml");
        match CollectorConfig::from_yaml(&text, Some(path), &NoProtocolConfig) {
            Ok(cfg) => {
                for d in &cfg.devices {
                    prop_assert!(check_device_id(&d.id).is_ok(), "{:?}", d.id);
                    prop_assert!(check_endpoint(&d.endpoint).is_ok(), "{:?}", d.endpoint);
                }
            }
            Err(errs) => {
                prop_assert!(!errs.is_empty());
                for e in errs.iter() {
                    prop_assert!(!e.message.is_empty(), "{e:?}");
                    prop_assert_eq!(e.file.as_deref(), Some(path), "{:?}", e);
                    if let Some(line) = e.line {
                        prop_assert!((1..=lines + 1).contains(&line), "line {} of {}: {:?}\n{}", line, lines, e, text);
                    }
                }
            }
        }
    }

    /// Any text at all gets an answer.
    #[test]
    fn any_text_is_judged(text in "\\PC{0,300}") {
        let _ = CollectorConfig::from_yaml(&text, None, &NoProtocolConfig);
    }
}
