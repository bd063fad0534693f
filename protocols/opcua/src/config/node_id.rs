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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace<'a> {
    /// A namespace index (`ns=`), valid only for the current server lifetime.
    Index(u16),
    /// A namespace URI (`nsu=`), resolved through the server's NamespaceArray.
    Uri(&'a str),
}

/// The identifier part of a node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Identifier<'a> {
    /// `i=` numeric.
    Numeric(u32),
    /// `s=` string.
    String(&'a str),
    /// `g=` GUID (canonical text).
    Guid(&'a str),
    /// `b=` opaque (base64 text).
    Opaque(&'a str),
}

/// A parsed node id: its text as configured (written as `node_id` in
/// records) and where its parts lie in that text. One shared allocation per
/// node (a device's list, its subscriptions and its backfill share them):
/// 100,000 configured nodes held ~64 bytes more each when the parts were
/// copies of their own (BENCHMARKS.md).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    text: Arc<str>,
    namespace: Ns,
    identifier: Id,
}

/// The namespace part: an index, or the URI `text[4..end]` (`nsu=` …`;`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Ns {
    Index(u16),
    Uri { end: u32 },
}

/// The identifier part: a number, or the text from `start` to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Id {
    Numeric(u32),
    String { start: u32 },
    Guid { start: u32 },
    Opaque { start: u32 },
}

impl NodeAddress {
    /// The node id as configured (trimmed); written as `node_id` in records.
    pub fn text(&self) -> &Arc<str> {
        &self.text
    }

    /// The namespace part.
    pub fn namespace(&self) -> Namespace<'_> {
        match self.namespace {
            Ns::Index(i) => Namespace::Index(i),
            Ns::Uri { end } => Namespace::Uri(&self.text[4..end as usize]),
        }
    }

    /// The identifier part.
    pub fn identifier(&self) -> Identifier<'_> {
        let from = |start: u32| &self.text[start as usize..];
        match self.identifier {
            Id::Numeric(n) => Identifier::Numeric(n),
            Id::String { start } => Identifier::String(from(start)),
            Id::Guid { start } => Identifier::Guid(from(start)),
            Id::Opaque { start } => Identifier::Opaque(from(start)),
        }
    }
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for NodeAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        NodeAddress::parse(text, None)
    }
}

impl NodeAddress {
    /// Parses `shared`, keeping that allocation as the node's text (no
    /// copy) unless it has surrounding blanks to trim: the texts of a
    /// devices file are shared by every device that lists the same node
    /// id ([`Settings::texts`](collector_core::config::Settings::texts)).
    pub fn from_shared(shared: Arc<str>) -> Result<Self, String> {
        NodeAddress::parse(&shared.clone(), Some(shared))
    }

    fn parse(text: &str, shared: Option<Arc<str>>) -> Result<Self, String> {
        let t = text.trim();
        // Offsets into `t` are kept as u32: a node id is never 4 GiB.
        let offset = |part: &str| -> Result<u32, String> {
            u32::try_from(part.as_ptr() as usize - t.as_ptr() as usize)
                .map_err(|_| format!("node id of {} bytes: too long", t.len()))
        };
        let (namespace, rest) = if let Some(r) = t.strip_prefix("nsu=") {
            let (uri, rest) = r.split_once(';').ok_or_else(|| {
                format!("node id {text:?}: `nsu=` must be followed by `;` and an identifier")
            })?;
            if uri.is_empty() {
                return Err(format!("node id {text:?}: empty namespace URI"));
            }
            (
                Ns::Uri {
                    end: offset(rest)? - 1,
                },
                rest,
            )
        } else if let Some(r) = t.strip_prefix("ns=") {
            let (idx, rest) = r.split_once(';').ok_or_else(|| {
                format!("node id {text:?}: `ns=` must be followed by `;` and an identifier")
            })?;
            let idx: u16 = idx.parse().map_err(|_| {
                format!("node id {text:?}: namespace index {idx:?} is not a number 0-65535")
            })?;
            (Ns::Index(idx), rest)
        } else {
            (Ns::Index(0), t)
        };
        let identifier = if let Some(v) = rest.strip_prefix("i=") {
            Id::Numeric(v.parse().map_err(|_| {
                format!("node id {text:?}: numeric identifier {v:?} is not a number 0-4294967295")
            })?)
        } else if let Some(v) = rest.strip_prefix("s=") {
            if v.is_empty() {
                return Err(format!("node id {text:?}: empty string identifier"));
            }
            Id::String { start: offset(v)? }
        } else if let Some(v) = rest.strip_prefix("g=") {
            if !is_guid(v) {
                return Err(format!("node id {text:?}: {v:?} is not a GUID"));
            }
            Id::Guid { start: offset(v)? }
        } else if let Some(v) = rest.strip_prefix("b=") {
            if v.is_empty() || opcua::types::ByteString::from_base64(v).is_none() {
                return Err(format!(
                    "node id {text:?}: opaque identifier {v:?} is not base64"
                ));
            }
            Id::Opaque { start: offset(v)? }
        } else {
            return Err(format!(
                "node id {text:?}: expected an identifier `i=`, `s=`, `g=` or `b=` (e.g. `ns=2;s=Tag1`)"
            ));
        };
        let text = match shared {
            Some(s) if s.len() == t.len() => s,
            _ => Arc::from(t),
        };
        Ok(NodeAddress {
            namespace,
            identifier,
            text,
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
        assert_eq!(n.namespace(), Namespace::Index(2));
        assert_eq!(n.identifier(), Identifier::String("Tag1"));
        let n: NodeAddress = "i=2258".parse().unwrap();
        assert_eq!(n.namespace(), Namespace::Index(0));
        assert_eq!(n.identifier(), Identifier::Numeric(2258));
        let n: NodeAddress = "nsu=urn:x:y;s=A.B".parse().unwrap();
        assert_eq!(n.namespace(), Namespace::Uri("urn:x:y"));
        assert_eq!(n.identifier(), Identifier::String("A.B"));
        let n: NodeAddress = "ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a"
            .parse()
            .unwrap();
        assert_eq!(
            n.identifier(),
            Identifier::Guid("09087e75-8e5e-499b-954f-f2a9603db28a")
        );
        let n: NodeAddress = "ns=1;b=AAEC".parse().unwrap();
        assert_eq!(n.identifier(), Identifier::Opaque("AAEC"));
        let n: NodeAddress = "  ns=3;s=Padded ".parse().unwrap();
        assert_eq!(n.text().as_ref(), "ns=3;s=Padded");
        assert_eq!(n.identifier(), Identifier::String("Padded"));
    }

    proptest::proptest! {
        /// Whatever the text, parsing answers (never panics).
        #[test]
        fn any_text_parses_or_is_refused(text in "\\PC*") {
            if let Ok(n) = text.parse::<NodeAddress>() {
                // The parts lie inside the text it keeps.
                let _ = (n.namespace(), n.identifier());
            }
        }

        /// URI and string parts come back as written, whatever their
        /// characters (multi-byte ones included) and surrounding blanks.
        #[test]
        fn uri_and_string_ids_round_trip(
            uri in "[^;\\s]{1,40}",
            id in "\\PC{0,40}[^\\s]",
            ns in proptest::prelude::any::<u16>(),
        ) {
            let n: NodeAddress = format!(" nsu={uri};s={id}\t").parse().unwrap();
            proptest::prop_assert_eq!(n.namespace(), Namespace::Uri(uri.as_str()));
            proptest::prop_assert_eq!(n.identifier(), Identifier::String(id.as_str()));
            proptest::prop_assert_eq!(n.text().as_ref(), format!("nsu={uri};s={id}"));
            let n: NodeAddress = format!("ns={ns};s={id}").parse().unwrap();
            proptest::prop_assert_eq!(n.namespace(), Namespace::Index(ns));
            proptest::prop_assert_eq!(n.identifier(), Identifier::String(id.as_str()));
        }

        /// Every numeric and opaque id round-trips.
        #[test]
        fn numeric_and_opaque_ids_round_trip(
            ns in proptest::prelude::any::<u16>(),
            i in proptest::prelude::any::<u32>(),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..64),
        ) {
            let n: NodeAddress = format!("ns={ns};i={i}").parse().unwrap();
            proptest::prop_assert_eq!(n.namespace(), Namespace::Index(ns));
            proptest::prop_assert_eq!(n.identifier(), Identifier::Numeric(i));
            let b64 = opcua::types::ByteString::from(bytes).as_base64();
            let n: NodeAddress = format!("nsu=urn:x;b={b64}").parse().unwrap();
            proptest::prop_assert_eq!(n.namespace(), Namespace::Uri("urn:x"));
            proptest::prop_assert_eq!(n.identifier(), Identifier::Opaque(b64.as_str()));
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
