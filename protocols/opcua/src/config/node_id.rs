//! Node ids as written in configuration: `ns=2;s=Tag1`, `i=2258`,
//! `nsu=urn:vendor:plant;s=Line1.Temp`, `ns=1;g=<guid>`, `ns=1;b=<base64>`.
//!
//! Parsed at validation time so a typo is reported with its line before any
//! device is contacted. `nsu=` ids are resolved to an index by the protocol
//! adapter at connect (and again after every reconnect), because a server
//! may renumber its namespaces when it restarts.

use std::fmt;
use std::sync::Arc;

/// Which namespace a node id lives in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// A namespace index (`ns=`), valid only for the current server lifetime.
    Index(u16),
    /// A namespace URI (`nsu=`), resolved through the server's NamespaceArray.
    Uri(String),
}

/// The identifier part of a node id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identifier {
    /// `i=` numeric.
    Numeric(u32),
    /// `s=` string.
    String(String),
    /// `g=` GUID (canonical text).
    Guid(String),
    /// `b=` opaque (base64 text).
    Opaque(String),
}

/// A parsed node id plus its original text (used in records).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    /// The namespace part.
    pub namespace: Namespace,
    /// The identifier part.
    pub identifier: Identifier,
    /// The text as configured; written as `node_id` in records.
    pub text: Arc<str>,
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for NodeAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let t = text.trim();
        let (namespace, rest) = if let Some(r) = t.strip_prefix("nsu=") {
            let (uri, rest) = r.split_once(';').ok_or_else(|| {
                format!("node id {text:?}: `nsu=` must be followed by `;` and an identifier")
            })?;
            if uri.is_empty() {
                return Err(format!("node id {text:?}: empty namespace URI"));
            }
            (Namespace::Uri(uri.to_string()), rest)
        } else if let Some(r) = t.strip_prefix("ns=") {
            let (idx, rest) = r.split_once(';').ok_or_else(|| {
                format!("node id {text:?}: `ns=` must be followed by `;` and an identifier")
            })?;
            let idx: u16 = idx.parse().map_err(|_| {
                format!("node id {text:?}: namespace index {idx:?} is not a number 0-65535")
            })?;
            (Namespace::Index(idx), rest)
        } else {
            (Namespace::Index(0), t)
        };
        let identifier = if let Some(v) = rest.strip_prefix("i=") {
            Identifier::Numeric(v.parse().map_err(|_| {
                format!("node id {text:?}: numeric identifier {v:?} is not a number 0-4294967295")
            })?)
        } else if let Some(v) = rest.strip_prefix("s=") {
            if v.is_empty() {
                return Err(format!("node id {text:?}: empty string identifier"));
            }
            Identifier::String(v.to_string())
        } else if let Some(v) = rest.strip_prefix("g=") {
            if !is_guid(v) {
                return Err(format!("node id {text:?}: {v:?} is not a GUID"));
            }
            Identifier::Guid(v.to_string())
        } else if let Some(v) = rest.strip_prefix("b=") {
            if v.is_empty() || opcua::types::ByteString::from_base64(v).is_none() {
                return Err(format!(
                    "node id {text:?}: opaque identifier {v:?} is not base64"
                ));
            }
            Identifier::Opaque(v.to_string())
        } else {
            return Err(format!(
                "node id {text:?}: expected an identifier `i=`, `s=`, `g=` or `b=` (e.g. `ns=2;s=Tag1`)"
            ));
        };
        Ok(NodeAddress {
            namespace,
            identifier,
            text: Arc::from(t),
        })
    }
}

fn is_guid(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    parts.len() == 5
        && parts
            .iter()
            .zip(lens)
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        let n: NodeAddress = "ns=2;s=Tag1".parse().unwrap();
        assert_eq!(n.namespace, Namespace::Index(2));
        assert_eq!(n.identifier, Identifier::String("Tag1".into()));
        let n: NodeAddress = "i=2258".parse().unwrap();
        assert_eq!(n.namespace, Namespace::Index(0));
        assert_eq!(n.identifier, Identifier::Numeric(2258));
        let n: NodeAddress = "nsu=urn:x:y;s=A.B".parse().unwrap();
        assert_eq!(n.namespace, Namespace::Uri("urn:x:y".into()));
        let n: NodeAddress = "ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a"
            .parse()
            .unwrap();
        assert!(matches!(n.identifier, Identifier::Guid(_)));
        let n: NodeAddress = "ns=1;b=AAEC".parse().unwrap();
        assert_eq!(n.identifier, Identifier::Opaque("AAEC".into()));
    }

    proptest::proptest! {
        /// Whatever the text, parsing answers (never panics).
        #[test]
        fn any_text_parses_or_is_refused(text in "\\PC*") {
            let _ = text.parse::<NodeAddress>();
        }

        /// Every numeric and opaque id round-trips.
        #[test]
        fn numeric_and_opaque_ids_round_trip(
            ns in proptest::prelude::any::<u16>(),
            i in proptest::prelude::any::<u32>(),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..64),
        ) {
            let n: NodeAddress = format!("ns={ns};i={i}").parse().unwrap();
            proptest::prop_assert_eq!(n.namespace, Namespace::Index(ns));
            proptest::prop_assert_eq!(n.identifier, Identifier::Numeric(i));
            let b64 = opcua::types::ByteString::from(bytes).as_base64();
            let n: NodeAddress = format!("nsu=urn:x;b={b64}").parse().unwrap();
            proptest::prop_assert_eq!(n.identifier, Identifier::Opaque(b64));
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "ns=x;s=A",
            "ns=2;q=A",
            "ns=2",
            "ns=2;s=",
            "nsu=;s=a",
            "ns=70000;i=1",
            "i=abc",
            "ns=1;g=nope",
            "ns=1;b=!!!",
            "b=",
        ] {
            assert!(bad.parse::<NodeAddress>().is_err(), "{bad}");
        }
    }
}
