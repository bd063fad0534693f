//! Records in the Protobuf encoding read back through the published
//! schema, `docs/record.proto`, compiled at run time (protox: no `protoc`
//! needed) and decoded with reflection, as a consumer without our code
//! would. [`Schema::to_json`] rewrites a decoded record as the JSON
//! envelope of `docs/record-format.md`, so the checks written for JSON
//! records (the JSON Schema, the simulator's values, gap-free `seq`s)
//! apply to Protobuf records unchanged, and the two encodings can be
//! compared value for value.

use std::path::Path;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, ReflectMessage, Value};
use serde_json::{json, Map, Value as Json};

/// The fully qualified name of the record message.
pub const RECORD_MESSAGE: &str = "opc_collector.record.v1.Record";

/// `docs/record.proto`, compiled.
#[derive(Debug, Clone)]
pub struct Schema {
    record: MessageDescriptor,
}

impl Schema {
    /// Compiles `record.proto` found in `docs` (with the well-known types
    /// it imports).
    pub fn load(docs: &Path) -> Result<Schema, String> {
        let mut compiler = protox::Compiler::new([docs]).map_err(|e| e.to_string())?;
        compiler.include_imports(true);
        compiler
            .open_file("record.proto")
            .map_err(|e| format!("{}/record.proto: {e}", docs.display()))?;
        let pool: DescriptorPool = compiler.descriptor_pool();
        let record = pool
            .get_message_by_name(RECORD_MESSAGE)
            .ok_or_else(|| format!("record.proto has no {RECORD_MESSAGE}"))?;
        Ok(Schema { record })
    }

    /// The workspace's `docs/record.proto`.
    pub fn workspace() -> Result<Schema, String> {
        Schema::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs"))
    }

    /// Decodes one message value.
    pub fn decode(&self, payload: &[u8]) -> Result<DynamicMessage, String> {
        DynamicMessage::decode(self.record.clone(), payload).map_err(|e| e.to_string())
    }

    /// Decodes one message value and writes it as the JSON envelope.
    pub fn to_json(&self, payload: &[u8]) -> Result<Json, String> {
        record_json(&self.decode(payload)?)
    }
}

fn field(m: &DynamicMessage, name: &str) -> Result<Value, String> {
    m.get_field_by_name(name)
        .map(|v| v.into_owned())
        .ok_or_else(|| format!("{} has no field {name}", m.descriptor().full_name()))
}

fn has(m: &DynamicMessage, name: &str) -> bool {
    m.has_field_by_name(name)
}

fn message(m: &DynamicMessage, name: &str) -> Result<DynamicMessage, String> {
    match field(m, name)? {
        Value::Message(m) => Ok(m),
        other => Err(format!("{name}: not a message: {other:?}")),
    }
}

fn string(m: &DynamicMessage, name: &str) -> Result<String, String> {
    match field(m, name)? {
        Value::String(s) => Ok(s),
        other => Err(format!("{name}: not a string: {other:?}")),
    }
}

fn uint(m: &DynamicMessage, name: &str) -> Result<u64, String> {
    match field(m, name)? {
        Value::U32(v) => Ok(u64::from(v)),
        Value::U64(v) => Ok(v),
        other => Err(format!("{name}: not an unsigned integer: {other:?}")),
    }
}

/// A `google.protobuf.Timestamp` as RFC 3339, the way the JSON encoding
/// writes it (fraction in 0, 3, 6 or 9 digits).
fn time(m: &DynamicMessage) -> Result<Json, String> {
    let seconds = match field(m, "seconds")? {
        Value::I64(s) => s,
        other => return Err(format!("seconds: {other:?}")),
    };
    let nanos = match field(m, "nanos")? {
        Value::I32(n) => u32::try_from(n)
            .ok()
            .filter(|n| *n <= 999_999_999)
            .ok_or_else(|| format!("nanos {n} outside 0..=999999999"))?,
        other => return Err(format!("nanos: {other:?}")),
    };
    let t = DateTime::<Utc>::from_timestamp(seconds, nanos)
        .ok_or_else(|| format!("timestamp out of range: {seconds}s {nanos}ns"))?;
    Ok(Json::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
}

fn record_json(r: &DynamicMessage) -> Result<Json, String> {
    let mut out = Map::new();
    out.insert("schema".into(), json!(uint(r, "schema")?));
    out.insert("device_id".into(), json!(string(r, "device_id")?));
    out.insert("seq".into(), json!(uint(r, "seq")?));
    let parts = uint(r, "parts")?;
    if parts > 0 {
        out.insert("part".into(), json!(uint(r, "part")?));
        out.insert("parts".into(), json!(parts));
    }
    let origin = match field(r, "origin")? {
        Value::EnumNumber(0) => None,
        Value::EnumNumber(1) => Some("data_change"),
        Value::EnumNumber(2) => Some("backfill"),
        other => return Err(format!("origin: {other:?}")),
    };
    if let Some(origin) = origin {
        out.insert("origin".into(), json!(origin));
    }
    if has(r, "window") {
        let w = message(r, "window")?;
        out.insert(
            "window".into(),
            json!({"from": time(&message(&w, "from_time")?)?, "to": time(&message(&w, "to_time")?)?}),
        );
    }
    out.insert("collector_id".into(), json!(string(r, "collector_id")?));
    out.insert("read_time".into(), time(&message(r, "read_time")?)?);
    let samples = match field(r, "samples")? {
        Value::List(samples) => samples,
        other => return Err(format!("samples: {other:?}")),
    };
    let samples = samples
        .iter()
        .map(|s| match s {
            Value::Message(s) => sample_json(s),
            other => Err(format!("sample: {other:?}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.insert("samples".into(), Json::Array(samples));
    Ok(Json::Object(out))
}

fn sample_json(s: &DynamicMessage) -> Result<Json, String> {
    let (type_name, value) = if has(s, "value") {
        value_json(&message(s, "value")?)?
    } else {
        ("Null".to_string(), Json::Null)
    };
    let code = uint(s, "status_code")?;
    let name = if code == 0 {
        "Good".to_string()
    } else {
        string(s, "status_name")?
    };
    let mut out = Map::new();
    out.insert("node_id".into(), json!(string(s, "node_id")?));
    out.insert("type".into(), json!(type_name));
    out.insert("value".into(), value);
    out.insert("status".into(), json!({"code": code, "name": name}));
    for t in ["source_timestamp", "server_timestamp"] {
        if has(s, t) {
            out.insert(t.into(), time(&message(s, t)?)?);
        }
    }
    Ok(Json::Object(out))
}

/// A float as the JSON encoding writes it: serde_json's shortest decimal
/// that reads back as the same `f32`/`f64`; non-finite ones as strings.
fn float_json(v: f64, shortest: serde_json::Result<String>) -> Result<Json, String> {
    if v.is_nan() {
        Ok(json!("NaN"))
    } else if v.is_infinite() {
        Ok(json!(if v > 0.0 { "Infinity" } else { "-Infinity" }))
    } else {
        shortest
            .and_then(|s| serde_json::from_str(&s))
            .map_err(|e| e.to_string())
    }
}

/// A `Value` message: its OPC UA type name and the JSON value.
fn value_json(v: &DynamicMessage) -> Result<(String, Json), String> {
    let Some((case, value)) = v.fields().next() else {
        return Ok(("Null".to_string(), Json::Null));
    };
    let type_name = match case.name() {
        "boolean_value" => "Boolean",
        "sbyte_value" => "SByte",
        "byte_value" => "Byte",
        "int16_value" => "Int16",
        "uint16_value" => "UInt16",
        "int32_value" => "Int32",
        "uint32_value" => "UInt32",
        "int64_value" => "Int64",
        "uint64_value" => "UInt64",
        "float_value" => "Float",
        "double_value" => "Double",
        "string_value" => "String",
        "date_time_value" => "DateTime",
        "byte_string_value" => "ByteString",
        "guid_value" => "Guid",
        "status_code_value" => "StatusCode",
        "other_value" => {
            let Value::Message(o) = value else {
                return Err(format!("other_value: {value:?}"));
            };
            return Ok((string(o, "type_name")?, json!(string(o, "text")?)));
        }
        "array_value" => {
            let Value::Message(a) = value else {
                return Err(format!("array_value: {value:?}"));
            };
            let element = string(a, "element_type")?;
            let Value::List(values) = field(a, "values")? else {
                return Err("values: not a list".to_string());
            };
            let values = values
                .iter()
                .map(|v| match v {
                    Value::Message(v) => value_json(v).map(|(_, j)| j),
                    other => Err(format!("array element: {other:?}")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok((format!("{element}[]"), Json::Array(values)));
        }
        other => return Err(format!("unknown Value case {other}")),
    };
    let json = match value {
        Value::Bool(b) => json!(b),
        Value::I32(i) => json!(i),
        Value::I64(i) => json!(i),
        Value::U32(u) => json!(u),
        Value::U64(u) => json!(u),
        Value::F32(f) => float_json(f64::from(*f), serde_json::to_string(f))?,
        Value::F64(f) => float_json(*f, serde_json::to_string(f))?,
        Value::String(s) => json!(s),
        Value::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Message(t) => time(t)?,
        other => return Err(format!("{}: {other:?}", case.name())),
    };
    Ok((type_name.to_string(), json))
}
