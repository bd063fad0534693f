//! OPC UA values, statuses and timestamps to the collector's record types.
//! Every built-in type maps to a [`Value`]; the rare structured ones are
//! kept as text with their type name rather than dropped.

use collector_core::record::{Sample, Status, Value};
use opcua::types::{DataValue, StatusCode, Variant, VariantScalarTypeId};
use std::sync::Arc;

/// A record sample from one DataValue of a Read response.
pub(crate) fn sample(node_id: &Arc<str>, dv: DataValue) -> Sample {
    let status = dv.status.unwrap_or(StatusCode::Good);
    Sample {
        node_id: node_id.clone(),
        value: dv.value.map(value).unwrap_or(Value::Null),
        status: status_of(status),
        source_timestamp: dv.source_timestamp.map(|t| t.as_chrono()),
        server_timestamp: dv.server_timestamp.map(|t| t.as_chrono()),
    }
}

/// A sample for a node that could not even be requested (e.g. its
/// namespace URI is not on the server).
pub(crate) fn missing(node_id: &Arc<str>, code: StatusCode) -> Sample {
    Sample {
        node_id: node_id.clone(),
        value: Value::Null,
        status: status_of(code),
        source_timestamp: None,
        server_timestamp: Some(chrono::Utc::now()),
    }
}

pub(crate) fn status_of(code: StatusCode) -> Status {
    Status {
        code: code.bits(),
        name: if code.bits() == 0 {
            "Good"
        } else {
            code.sub_code().name()
        },
    }
}

fn value(v: Variant) -> Value {
    match v {
        Variant::Empty => Value::Null,
        Variant::Boolean(b) => Value::Boolean(b),
        Variant::SByte(x) => Value::SByte(x),
        Variant::Byte(x) => Value::Byte(x),
        Variant::Int16(x) => Value::Int16(x),
        Variant::UInt16(x) => Value::UInt16(x),
        Variant::Int32(x) => Value::Int32(x),
        Variant::UInt32(x) => Value::UInt32(x),
        Variant::Int64(x) => Value::Int64(x),
        Variant::UInt64(x) => Value::UInt64(x),
        Variant::Float(x) => Value::Float(x),
        Variant::Double(x) => Value::Double(x),
        Variant::String(s) => Value::String(s.as_ref().to_string()),
        Variant::DateTime(t) => Value::DateTime(t.as_chrono()),
        Variant::Guid(g) => Value::Guid(g.to_string()),
        Variant::StatusCode(c) => Value::StatusCode(c.bits()),
        Variant::ByteString(b) => Value::ByteString(b.value.unwrap_or_default()),
        Variant::Array(a) => Value::Array {
            element_type: scalar_name(a.value_type),
            values: a.values.into_iter().map(value).collect(),
        },
        Variant::Variant(inner) => value(*inner),
        Variant::XmlElement(x) => other("XmlElement", x.to_string()),
        Variant::QualifiedName(q) => other("QualifiedName", q.to_string()),
        Variant::LocalizedText(t) => other("LocalizedText", t.text.to_string()),
        Variant::NodeId(n) => other("NodeId", n.to_string()),
        Variant::ExpandedNodeId(n) => other("ExpandedNodeId", n.to_string()),
        Variant::ExtensionObject(e) => other("ExtensionObject", format!("{e:?}")),
        Variant::DataValue(d) => other("DataValue", format!("{d:?}")),
        Variant::DiagnosticInfo(d) => other("DiagnosticInfo", format!("{d:?}")),
    }
}

fn other(type_name: &'static str, text: String) -> Value {
    Value::Other { type_name, text }
}

fn scalar_name(t: VariantScalarTypeId) -> &'static str {
    use VariantScalarTypeId as T;
    match t {
        T::Boolean => "Boolean",
        T::SByte => "SByte",
        T::Byte => "Byte",
        T::Int16 => "Int16",
        T::UInt16 => "UInt16",
        T::Int32 => "Int32",
        T::UInt32 => "UInt32",
        T::Int64 => "Int64",
        T::UInt64 => "UInt64",
        T::Float => "Float",
        T::Double => "Double",
        T::String => "String",
        T::DateTime => "DateTime",
        T::Guid => "Guid",
        T::ByteString => "ByteString",
        T::XmlElement => "XmlElement",
        T::NodeId => "NodeId",
        T::ExpandedNodeId => "ExpandedNodeId",
        T::StatusCode => "StatusCode",
        T::QualifiedName => "QualifiedName",
        T::LocalizedText => "LocalizedText",
        T::ExtensionObject => "ExtensionObject",
        T::DataValue => "DataValue",
        T::Variant => "Variant",
        T::DiagnosticInfo => "DiagnosticInfo",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_status_names_and_arrays() {
        let s = status_of(StatusCode::BadSensorFailure);
        assert_eq!(s.name, "BadSensorFailure");
        assert_eq!(s.code, StatusCode::BadSensorFailure.bits());
        assert_eq!(status_of(StatusCode::Good).name, "Good");
        let v = value(Variant::from(vec![1.0f64, 2.0]));
        assert_eq!(
            v,
            Value::Array {
                element_type: "Double",
                values: vec![Value::Double(1.0), Value::Double(2.0)]
            }
        );
    }
}
