//! The value a register holds, and the kinds a schema field accepts.

use serde::{Deserialize, Serialize};

/// A register value. `Time` is milliseconds since the Unix epoch (UTC); the
/// incident's time zone is kept separately in `occurred.time_zone`.
///
/// Floats are never NaN or infinite: validation refuses them, so the
/// canonical encoding of a change is always well defined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Time(i64),
    List(Vec<String>),
}

/// The value as a person reads it (the demo, a report shown to its
/// reader): text quoted, times in UTC, lists comma-separated. Never for
/// logs or errors, which carry no report data.
impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("(empty)"),
            Value::Bool(b) => f.write_str(if *b { "yes" } else { "no" }),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => write!(f, "\"{s}\""),
            Value::Time(ms) => match chrono::DateTime::from_timestamp_millis(*ms) {
                Some(t) => write!(f, "{}", t.format("%Y-%m-%d %H:%M:%S UTC")),
                None => write!(f, "{ms} ms"),
            },
            Value::List(items) => f.write_str(&items.join(", ")),
        }
    }
}

impl Value {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Text(_) => "text",
            Value::Time(_) => "time",
            Value::List(_) => "list",
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_time(&self) -> Option<i64> {
        match self {
            Value::Time(t) => Some(*t),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[String]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// Equality used to decide whether concurrent values really disagree.
    /// Floats compare by bit pattern so the relation is total.
    pub fn same_as(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            _ => self == other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Value;

    #[test]
    fn values_display_as_people_read_them() {
        assert_eq!(
            Value::Text("CBP 4471-B".into()).to_string(),
            "\"CBP 4471-B\""
        );
        assert_eq!(
            Value::Time(1_795_186_800_000).to_string(),
            "2026-11-20 15:00:00 UTC"
        );
        assert_eq!(
            Value::List(vec!["ice".into(), "cbp".into()]).to_string(),
            "ice, cbp"
        );
        assert_eq!(Value::Bool(true).to_string(), "yes");
        assert_eq!(Value::Null.to_string(), "(empty)");
    }
}
