//! A JSON tree that borrows its strings from the message body: what [`serde_json::Value`] is,
//! without an allocation per key and per string (a notification has some sixty of them, and the
//! parser reads a handful).
//!
//! Lookups behave as `Value`'s: a key given twice means its last value, and a value of another
//! type than asked for reads as absent.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    /// Borrowed unless the body escaped something in it.
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// The value of `key` in an object (the last, if the key repeats); `None` for anything else.
    pub(super) fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(fields) => fields.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    pub(super) fn as_array(&self) -> Option<&[Json<'a>]> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    pub(super) fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }
}

/// Short, for an error's detail: scalars as JSON, containers by kind.
impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Number(n) => write!(f, "{n}"),
            Json::String(s) => write!(f, "{s:?}"),
            Json::Array(_) => f.write_str("an array"),
            Json::Object(_) => f.write_str("an object"),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Json<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(b))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
        // JSON text has no NaN or infinity; serde_json's own Value reads them as null too.
        Ok(Number::from_f64(n).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Json::String(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(0).min(16));
        while let Some((key, value)) = map.next_entry::<Key<'de>, Json<'de>>()? {
            fields.push((key.0, value));
        }
        Ok(Json::Object(fields))
    }
}

/// An object's key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Json::deserialize(deserializer)? {
            Json::String(s) => Ok(Key(s)),
            other => Err(serde::de::Error::custom(format!(
                "an object key must be a string, not {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Json<'_> {
        serde_json::from_str(text).expect("valid JSON")
    }

    #[test]
    fn reads_what_value_reads() {
        for text in [
            r#"{"a":1,"b":[true,null,"x"],"c":{"d":-2.5},"e":"\u00e9\"q"}"#,
            r#"[1, 18446744073709551615, -9223372036854775808, 1e3]"#,
            r#""plain""#,
            "null",
        ] {
            let ours = parse(text);
            let theirs: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
            assert_eq!(to_value(&ours), theirs, "{text}");
        }
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let text = r#"{"key":"dp/a.txt","escaped":"a\"b"}"#;
        let json = parse(text);
        assert!(matches!(
            json.get("key"),
            Some(Json::String(Cow::Borrowed("dp/a.txt")))
        ));
        assert!(matches!(json.get("escaped"), Some(Json::String(Cow::Owned(s))) if s == "a\"b"));
    }

    #[test]
    fn a_repeated_key_reads_as_its_last_value_as_value_does() {
        let text = r#"{"a":1,"a":"two"}"#;
        let theirs: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
        assert_eq!(parse(text).get("a").and_then(Json::as_str), Some("two"));
        assert_eq!(theirs["a"], "two");
    }

    #[test]
    fn other_types_read_as_absent() {
        let json = parse(r#"{"n":5,"s":"5","o":{}}"#);
        assert_eq!(json.get("n").and_then(Json::as_str), None);
        assert_eq!(json.get("s").and_then(Json::as_u64), None);
        assert_eq!(json.get("n").and_then(Json::as_u64), Some(5));
        assert!(json.get("o").is_some_and(Json::is_object));
        assert!(json.get("n").and_then(|n| n.get("x")).is_none());
        assert!(parse("[1]").as_array().is_some_and(|a| a.len() == 1));
    }

    fn to_value(json: &Json<'_>) -> serde_json::Value {
        use serde_json::Value;
        match json {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::String(s) => Value::String(s.to_string()),
            Json::Array(items) => Value::Array(items.iter().map(to_value).collect()),
            Json::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), to_value(v)))
                    .collect(),
            ),
        }
    }
}
