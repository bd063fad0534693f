//! A YAML document tree that remembers the line of every node, so every
//! configuration error can name `file:line`.
//!
//! serde_yaml stops at the first error and its `Value` has no positions;
//! validation must report every problem at once. So the document is parsed
//! once into this tree (with `${ENV}` expansion applied to scalars), each
//! part is deserialized on its own with `serde_path_to_error`, and an error's
//! path is walked back through the tree to find its line.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::error::ConfigError;

/// A parsed YAML node with the 1-based line it starts on.
///
/// Kept for the daemon's life (a device's [`Settings`](super::Settings) is
/// its entry's subtree), so it is compact: 24 bytes a node, slices sized
/// exactly, lines as `u32`, and scalar texts shared. A devices file repeats
/// the same node ids on every device of a model, and each repeat is the
/// same `Arc<str>` (the parser interns scalars per document). At 2,000
/// devices x 50 nodes the trees held ~2.8 KiB a device as `String`s, `Vec`s
/// and `usize` lines (BENCHMARKS.md, "Toward the floor").
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Scalar {
        text: Arc<str>,
        /// Plain (unquoted) scalars are typed (null, bool, number);
        /// quoted ones are always strings.
        plain: bool,
        line: Line,
    },
    Seq {
        items: Box<[Node]>,
        line: Line,
    },
    Map {
        entries: Box<[(Arc<str>, Line, Node)]>,
        line: Line,
    },
}

/// A 1-based line number as the tree keeps it (a configuration file has
/// far fewer than 2^32 lines; a larger number saturates).
pub(crate) type Line = u32;

/// `line` as the tree keeps it.
pub(crate) fn line32(line: usize) -> Line {
    Line::try_from(line).unwrap_or(Line::MAX)
}

impl Node {
    pub(crate) fn line(&self) -> usize {
        match self {
            Node::Scalar { line, .. } | Node::Seq { line, .. } | Node::Map { line, .. } => {
                *line as usize
            }
        }
    }

    /// An empty mapping starting at `line`.
    pub(crate) fn empty_map(line: usize) -> Node {
        Node::Map {
            entries: Box::default(),
            line: line32(line),
        }
    }

    /// The entry `key` of a mapping, with the line of the key.
    pub(crate) fn get(&self, key: &str) -> Option<(&Node, usize)> {
        match self {
            Node::Map { entries, .. } => entries
                .iter()
                .find(|(k, _, _)| &**k == key)
                .map(|(_, l, n)| (n, *l as usize)),
            _ => None,
        }
    }

    /// A tree from a JSON value (no positions: line 0), for settings built
    /// in code. Strings become quoted scalars, so they stay strings.
    pub(crate) fn from_json(value: &serde_json::Value) -> Node {
        use serde_json::Value as J;
        let scalar = |text: &str, plain: bool| Node::Scalar {
            text: Arc::from(text),
            plain,
            line: 0,
        };
        match value {
            J::Null => scalar("null", true),
            J::Bool(b) => scalar(if *b { "true" } else { "false" }, true),
            J::Number(n) => scalar(&n.to_string(), true),
            J::String(s) => scalar(s, false),
            J::Array(items) => Node::Seq {
                items: items.iter().map(Node::from_json).collect(),
                line: 0,
            },
            J::Object(map) => Node::Map {
                entries: map
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), 0, Node::from_json(v)))
                    .collect(),
                line: 0,
            },
        }
    }

    /// Converts to a JSON value for serde, resolving plain scalars the way
    /// YAML 1.2's core schema does.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Node::Scalar { text, plain, .. } => {
                if !plain {
                    return J::String(text.to_string());
                }
                match &**text {
                    "" | "~" | "null" | "Null" | "NULL" => J::Null,
                    "true" | "True" | "TRUE" => J::Bool(true),
                    "false" | "False" | "FALSE" => J::Bool(false),
                    t => {
                        if let Ok(i) = t.parse::<i64>() {
                            J::from(i)
                        } else if let Ok(u) = t.parse::<u64>() {
                            J::from(u)
                        } else if let Some(f) = t
                            .parse::<f64>()
                            .ok()
                            .filter(|f| f.is_finite() && t.chars().any(|c| c.is_ascii_digit()))
                        {
                            J::from(f)
                        } else {
                            J::String(t.to_string())
                        }
                    }
                }
            }
            Node::Seq { items, .. } => J::Array(items.iter().map(Node::to_json).collect()),
            Node::Map { entries, .. } => J::Object(
                entries
                    .iter()
                    .map(|(k, _, v)| (k.to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// The line of the deepest node on a serde error path.
    pub(crate) fn line_of(&self, path: &serde_path_to_error::Path) -> usize {
        use serde_path_to_error::Segment;
        let mut node = self;
        let mut line = self.line();
        for seg in path.iter() {
            let next = match (seg, node) {
                (Segment::Seq { index }, Node::Seq { items, .. }) => {
                    items.get(*index).map(|n| (n, n.line()))
                }
                (Segment::Map { key }, Node::Map { .. }) => node.get(key),
                _ => None,
            };
            match next {
                Some((n, l)) => {
                    node = n;
                    line = l;
                }
                None => break,
            }
        }
        line
    }
}

/// Deserializes `node` (found at `context`, e.g. `kafka` or `devices[3]`)
/// into `T`; on failure returns the error at the line of the offending field.
/// An empty node (a section whose keys are all commented out) is `T`'s
/// default.
pub(crate) fn deserialize<T: serde::de::DeserializeOwned + Default>(
    node: &Node,
    context: &str,
) -> Result<T, ConfigError> {
    let json = node.to_json();
    if json.is_null() {
        return Ok(T::default());
    }
    serde_path_to_error::deserialize(json).map_err(|e| {
        let line = node.line_of(e.path());
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let msg = if path == "." || path.is_empty() {
            format!("{context}: {inner}")
        } else {
            format!("{context}.{path}: {inner}")
        };
        ConfigError::new(msg).at(None, Some(line))
    })
}

/// How many nodes YAML aliases may add to a document in all. An alias is a
/// copy of its anchor's subtree, so nested aliases grow exponentially (the
/// "billion laughs": 12 lines that expand to 9^9 nodes); past this budget
/// the document is refused with the line of the alias that crossed it. A
/// million nodes is ~100 MB at most, and far beyond what a real file's
/// shared `security:` blocks need.
pub(crate) const MAX_ALIAS_NODES: usize = 1_000_000;

/// [`parse_within`] the default alias budget.
#[cfg(test)]
pub(crate) fn parse(text: &str) -> Result<Node, Vec<ConfigError>> {
    parse_within(text, MAX_ALIAS_NODES)
}

/// Parses a YAML document. `${VAR}` and `${VAR:-default}` in scalars are
/// replaced from the environment; `$$` is a literal `$`. Every expansion
/// error is reported; a syntax error stops parsing. Aliases add at most
/// `max_alias_nodes` nodes ([`MAX_ALIAS_NODES`] by default).
pub(crate) fn parse_within(text: &str, max_alias_nodes: usize) -> Result<Node, Vec<ConfigError>> {
    parse_with(text, max_alias_nodes, false)
}

/// [`parse_within`] with scalars taken literally (no `${VAR}` expansion):
/// for documents from elsewhere (a registry row, a file to import), which
/// must not read this process's environment.
pub(crate) fn parse_literal_within(
    text: &str,
    max_alias_nodes: usize,
) -> Result<Node, Vec<ConfigError>> {
    parse_with(text, max_alias_nodes, true)
}

fn parse_with(text: &str, max_alias_nodes: usize, literal: bool) -> Result<Node, Vec<ConfigError>> {
    let mut builder = Builder {
        max_alias_nodes,
        literal,
        ..Builder::default()
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, false) {
        return Err(vec![ConfigError::new(format!(
            "YAML syntax error: {}",
            e.info()
        ))
        .at(None, Some(e.marker().line()))]);
    }
    if !builder.errors.is_empty() {
        return Err(builder.errors);
    }
    Ok(builder.root.unwrap_or(Node::empty_map(1)))
}

/// An open sequence or mapping: its items so far, its line and anchor.
enum Frame {
    Seq(Vec<Node>, Line, usize),
    Map(
        Vec<(Arc<str>, Line, Node)>,
        Option<(Arc<str>, Line)>,
        Line,
        usize,
    ),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    /// Each anchor's subtree and its node count.
    anchors: HashMap<usize, (Node, usize)>,
    /// Nodes added by aliases so far.
    alias_nodes: usize,
    /// The budget of `alias_nodes` ([`MAX_ALIAS_NODES`] by default).
    max_alias_nodes: usize,
    /// Set once the alias budget is spent: later aliases are not expanded.
    alias_budget_spent: bool,
    /// Scalars as written: no `${VAR}` expansion.
    literal: bool,
    /// Every scalar text so far, so repeats share one allocation.
    texts: HashSet<Arc<str>>,
    errors: Vec<ConfigError>,
}

impl Node {
    /// Nodes in this subtree (itself included).
    fn count(&self) -> usize {
        match self {
            Node::Scalar { .. } => 1,
            Node::Seq { items, .. } => 1 + items.iter().map(Node::count).sum::<usize>(),
            Node::Map { entries, .. } => {
                1 + entries.iter().map(|(_, _, n)| 1 + n.count()).sum::<usize>()
            }
        }
    }
}

impl Builder {
    /// `text` as a shared allocation: the one already made for an equal
    /// scalar of this document, or a new one.
    fn intern(&mut self, text: String) -> Arc<str> {
        if let Some(t) = self.texts.get(text.as_str()) {
            return t.clone();
        }
        let t: Arc<str> = text.into();
        self.texts.insert(t.clone());
        t
    }

    fn push_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            let size = node.count();
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq(items, _, _)) => items.push(node),
            Some(Frame::Map(entries, pending, _, _)) => match pending.take() {
                None => {
                    // A key. Only scalar keys are meaningful in our configs.
                    match node {
                        Node::Scalar { text, line, .. } => *pending = Some((text, line)),
                        other => {
                            let line = other.line();
                            self.errors.push(
                                ConfigError::new("mapping keys must be plain strings")
                                    .at(None, Some(line)),
                            );
                            *pending = Some((Arc::from(""), line32(line)));
                        }
                    }
                }
                Some((key, key_line)) => entries.push((key, key_line, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let at = mark.line();
        let line = line32(at);
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let expanded = if self.literal {
                    Ok(text.to_string())
                } else {
                    expand_env(&text)
                };
                let text = match expanded {
                    Ok(t) => t,
                    Err(msg) => {
                        self.errors.push(
                            ConfigError::new(msg)
                                .at(None, Some(at))
                                .hint("export the variable or give a default: ${VAR:-default}"),
                        );
                        text
                    }
                };
                let text = self.intern(text);
                let plain = style == TScalarStyle::Plain;
                self.push_node(Node::Scalar { text, plain, line }, anchor);
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Frame::Seq(Vec::new(), line, anchor))
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map(Vec::new(), None, line, anchor))
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq(items, line, anchor)) = self.stack.pop() {
                    let items = items.into_boxed_slice();
                    self.push_node(Node::Seq { items, line }, anchor);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(entries, _, line, anchor)) = self.stack.pop() {
                    let entries = entries.into_boxed_slice();
                    self.push_node(Node::Map { entries, line }, anchor);
                }
            }
            Event::Alias(id) => {
                let placeholder = Node::Scalar {
                    text: Arc::from(""),
                    plain: true,
                    line,
                };
                match self.anchors.get(&id) {
                    None => {
                        self.errors
                            .push(ConfigError::new("unknown YAML alias").at(None, Some(at)));
                        self.push_node(placeholder, 0);
                    }
                    Some(_) if self.alias_budget_spent => self.push_node(placeholder, 0),
                    Some((_, size)) if self.alias_nodes + size > self.max_alias_nodes => {
                        self.alias_budget_spent = true;
                        self.errors.push(
                            ConfigError::new(format!(
                                "YAML aliases expand to more than {} nodes; refused (an alias bomb?)",
                                self.max_alias_nodes
                            ))
                            .at(None, Some(at))
                            .hint("write the repeated parts out, or use fewer nested aliases"),
                        );
                        self.push_node(placeholder, 0);
                    }
                    Some((node, size)) => {
                        self.alias_nodes += size;
                        let node = node.clone();
                        self.push_node(node, 0);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Expands `${VAR}` / `${VAR:-default}`; `$$` is a literal `$`.
fn expand_env(text: &str) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {text:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            match (std::env::var(name), default) {
                (Ok(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Ok(v), _) => out.push_str(&v),
                (Err(_), Some(d)) => out.push_str(d),
                (Err(_), None) => return Err(format!("environment variable `{name}` is not set")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The "billion laughs" document, for tests: `a0` is nine scalars, each
/// `aN` nine aliases of `aN-1`, and `devices: *a8` (9^9 nodes expanded).
#[cfg(test)]
pub(crate) fn alias_bomb() -> String {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let p = i - 1;
        let aliases = vec![format!("*a{p}"); 9].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{aliases}]\n"));
    }
    text.push_str("devices: *a8\n");
    text
}

#[cfg(test)]
mod tests {
    use super::alias_bomb;

    /// The "billion laughs": 9 aliases of 9 aliases, 9 levels deep (9^9
    /// nodes if expanded). Refused at the alias that crosses the budget,
    /// without building the tree (it used to take 21 GB).
    #[test]
    fn an_alias_bomb_is_refused_at_its_line() {
        let errs = super::parse(&alias_bomb()).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].message.contains("alias bomb"), "{errs:?}");
        let line = errs[0].line.unwrap();
        assert!((2..=10).contains(&line), "{errs:?}");
    }

    /// Aliases within the budget still work (a shared block reused).
    #[test]
    fn modest_aliases_expand() {
        let text = "base: &b {policy: none}\ndevices:\n  - security: *b\n  - security: *b\n";
        let root = super::parse(text).unwrap();
        let json = root.to_json();
        assert_eq!(json["devices"][1]["security"]["policy"], "none");
    }

    use super::*;

    #[test]
    fn lines_and_types() {
        let doc = "a: 1\nb:\n  - x\n  - 'true'\nc: true\n";
        let node = parse(doc).unwrap();
        assert_eq!(node.get("b").unwrap().1, 2);
        let json = node.to_json();
        assert_eq!(json["a"], 1);
        assert_eq!(json["b"][1], "true");
        assert_eq!(json["c"], true);
    }

    #[test]
    fn env_expansion() {
        std::env::set_var("COLLECTOR_TEST_X", "hello");
        assert_eq!(expand_env("${COLLECTOR_TEST_X}-1").unwrap(), "hello-1");
        assert_eq!(expand_env("${COLLECTOR_TEST_UNSET_Y:-d}").unwrap(), "d");
        assert_eq!(expand_env("$$5").unwrap(), "$5");
        assert!(expand_env("${COLLECTOR_TEST_UNSET_Y}").is_err());
    }

    #[test]
    fn syntax_error_has_line() {
        let errs = parse("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(errs[0].line.is_some());
    }
}
