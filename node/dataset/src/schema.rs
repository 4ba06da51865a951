//! The schema of a dataset: a small, documented subset of JSON Schema.
//!
//! Supported, and enforced on every record at import:
//!
//! ```json
//! {
//!   "type": "object",
//!   "properties": {
//!     "so_dinh_danh": {"type": "string", "maxLength": 12, "description": "..."},
//!     "gioi_tinh":    {"type": "string", "enum": ["Nam", "Nữ"]},
//!     "nam_sinh":     {"type": "integer"},
//!     "diem":         {"type": ["number", "null"]},
//!     "con_song":     {"type": "boolean"}
//!   },
//!   "required": ["so_dinh_danh"],
//!   "additionalProperties": false
//! }
//! ```
//!
//! Top level: `type` (must be `"object"`), `properties`, `required`,
//! `additionalProperties` (a boolean; absent means `true`, as in JSON
//! Schema), and the annotations `$schema`, `$id`, `title`, `description`.
//! Per property: `type` (one of `string`, `integer`, `number`, `boolean`,
//! optionally paired with `"null"` as `["string", "null"]`), `maxLength`
//! (strings only; counted in Unicode characters, so "Nguyễn" is 6), `enum`,
//! and the annotations `title` and `description`. Any other keyword is
//! refused when the schema is loaded, so that nobody believes it is enforced.

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;
use std::path::Path;

/// Why a schema was refused.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The schema file could not be read.
    #[error("cannot read the schema {path}: {source}")]
    Read {
        /// The schema file.
        path: std::path::PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The schema text does not parse as JSON.
    #[error("the schema is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A keyword outside the supported subset.
    #[error(
        "{at}: keyword {keyword:?} is not supported by lgsp (supported: {supported}); \
         remove it, it would not be enforced"
    )]
    Unsupported {
        /// Where: "the schema" for the top level, `property "name"` for a property.
        at: String,
        /// The keyword found.
        keyword: String,
        /// The keywords allowed there, comma-separated.
        supported: &'static str,
    },
    /// A supported keyword with a value lgsp cannot use.
    #[error("{at}: {why}")]
    Invalid {
        /// Where, spelled as in [`SchemaError::Unsupported`], or `key field
        /// "name"` for an import key the schema does not allow.
        at: String,
        /// What is wrong with the value.
        why: String,
    },
}

const TOP_KEYWORDS: &str =
    "type, properties, required, additionalProperties, $schema, $id, title, description";
const PROPERTY_KEYWORDS: &str = "type, maxLength, enum, title, description";

/// The JSON type of one field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// `"string"`: JSON text, kept byte for byte.
    String,
    /// `"integer"`: a JSON number without a fractional part (`3` or `3.0`).
    Integer,
    /// `"number"`: any JSON number.
    Number,
    /// `"boolean"`: `true` or `false`.
    Boolean,
}

impl FieldType {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "string" => Self::String,
            "integer" => Self::Integer,
            "number" => Self::Number,
            "boolean" => Self::Boolean,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Boolean => "boolean",
        }
    }

    fn admits(self, value: &Value) -> bool {
        match (self, value) {
            (Self::String, Value::String(_)) => true,
            (Self::Boolean, Value::Bool(_)) => true,
            (Self::Number, Value::Number(_)) => true,
            // JSON Schema: an integer is any number without a fractional part.
            (Self::Integer, Value::Number(n)) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        }
    }
}

/// One property of the schema.
#[derive(Clone, Debug, PartialEq)]
pub struct Property {
    /// The field's name in records (`so_dinh_danh`).
    pub name: String,
    /// The JSON type its value must have (`type`).
    pub field_type: FieldType,
    /// `["T", "null"]`: the value may be JSON null.
    pub nullable: bool,
    /// For strings: the most Unicode characters allowed.
    pub max_length: Option<u64>,
    /// The only values allowed, when present.
    pub allowed: Option<Vec<Value>>,
    /// The property's `description`, for people reading the catalog; not enforced.
    pub description: Option<String>,
}

/// A parsed, checked schema. Its properties keep the order of the schema
/// file, which is also the order of the fields in stored records.
#[derive(Clone, Debug, PartialEq)]
pub struct Schema {
    properties: Vec<Property>,
    required: Vec<String>,
    additional_properties: bool,
    source: String,
}

impl Schema {
    /// Parses and checks a schema. Fails on invalid JSON, on any keyword
    /// outside the supported subset, and on values that make no sense (a
    /// `required` field that is not a property, `maxLength` on a number, an
    /// `enum` value of the wrong type).
    pub fn from_json(text: &str) -> Result<Self, SchemaError> {
        let root: Value = serde_json::from_str(text)?;
        let Value::Object(top) = root else {
            return Err(invalid("the schema", "it must be a JSON object"));
        };
        for (keyword, value) in &top {
            match keyword.as_str() {
                "type" => {
                    if value != "object" {
                        return Err(invalid("the schema", "\"type\" must be \"object\""));
                    }
                }
                "properties" | "required" | "additionalProperties" => {}
                "$schema" | "$id" | "title" | "description" => {}
                _ => {
                    return Err(SchemaError::Unsupported {
                        at: "the schema".into(),
                        keyword: keyword.clone(),
                        supported: TOP_KEYWORDS,
                    });
                }
            }
        }
        let Some(Value::Object(props)) = top.get("properties") else {
            return Err(invalid(
                "the schema",
                "\"properties\" must be present and be an object naming each field",
            ));
        };
        // A second pass over the same text reads the names as written: a
        // name given twice is refused (serde_json's Map keeps the last).
        let order: PropertyOrder = serde_json::from_str(text)?;
        let mut properties = Vec::with_capacity(props.len());
        for (name, _) in order.properties.map(|p| p.0).unwrap_or_default() {
            properties.push(property(&name, &props[&name])?);
        }

        let mut required = Vec::new();
        if let Some(value) = top.get("required") {
            let names = value
                .as_array()
                .filter(|a| a.iter().all(Value::is_string))
                .ok_or_else(|| {
                    invalid("the schema", "\"required\" must be an array of field names")
                })?;
            for name in names.iter().filter_map(Value::as_str) {
                if !properties.iter().any(|p| p.name == name) {
                    return Err(invalid(
                        "\"required\"",
                        &format!("{name:?} is not one of the properties"),
                    ));
                }
                required.push(name.to_owned());
            }
        }
        let additional_properties = match top.get("additionalProperties") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(invalid(
                    "\"additionalProperties\"",
                    "lgsp supports only true or false here",
                ));
            }
        };
        Ok(Self {
            properties,
            required,
            additional_properties,
            source: text.to_owned(),
        })
    }

    /// Reads and parses a schema file. Fails with [`SchemaError::Read`] when
    /// it cannot be read, and as [`Schema::from_json`] does.
    pub fn load(path: &Path) -> Result<Self, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// The properties, in the schema's order.
    pub fn properties(&self) -> &[Property] {
        &self.properties
    }

    /// The property called `name`.
    pub fn property(&self, name: &str) -> Option<&Property> {
        self.properties.iter().find(|p| p.name == name)
    }

    /// Whether a record must have `name`.
    pub fn is_required(&self, name: &str) -> bool {
        self.required.iter().any(|r| r == name)
    }

    /// Whether fields that are not properties are allowed.
    pub fn allows_additional(&self) -> bool {
        self.additional_properties
    }

    /// The schema text as it was given (kept with the data it describes).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Checks a record. Fails with every violation found, joined by "; ".
    pub fn validate(&self, record: &Map<String, Value>) -> Result<(), String> {
        self.validate_fields(record.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// [`Schema::validate`] for a record held as (name, value) pairs.
    pub fn validate_fields<'a>(
        &self,
        fields: impl IntoIterator<Item = (&'a str, &'a Value)> + Clone,
    ) -> Result<(), String> {
        let mut problems = Vec::new();
        for name in &self.required {
            if !fields.clone().into_iter().any(|(k, _)| k == name) {
                problems.push(format!("missing required field {name:?}"));
            }
        }
        for (name, value) in fields {
            match self.property(name) {
                Some(p) => {
                    if let Err(why) = p.check(value) {
                        problems.push(why);
                    }
                }
                None if !self.additional_properties => problems.push(format!(
                    "unknown field {name:?} (the schema does not allow fields beyond its properties)"
                )),
                None => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Converts one CSV cell to the JSON value the schema asks for: a string
    /// stays as it is; an integer, number or boolean is parsed (surrounding
    /// spaces ignored; booleans are `true` or `false` in any case). An empty
    /// cell of a non-string field is no value at all: `Ok(None)`. A column
    /// that is not a property stays a string. The result still has to pass
    /// [`Schema::validate`].
    pub fn convert_csv_value(&self, field: &str, raw: &str) -> Result<Option<Value>, String> {
        let Some(p) = self.property(field) else {
            return Ok(Some(Value::String(raw.to_owned())));
        };
        let text = raw.trim();
        if p.field_type != FieldType::String && text.is_empty() {
            return Ok(None);
        }
        let bad = || format!("field {field:?}: {raw:?} is not {}", article(p.field_type));
        let value = match p.field_type {
            FieldType::String => Value::String(raw.to_owned()),
            FieldType::Integer => match text.parse::<i64>() {
                Ok(i) => Value::from(i),
                Err(_) => Value::from(text.parse::<u64>().map_err(|_| bad())?),
            },
            FieldType::Number => text
                .parse::<i64>()
                .ok()
                .map(Value::from)
                .or_else(|| {
                    text.parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number)
                })
                .ok_or_else(bad)?,
            FieldType::Boolean => {
                if text.eq_ignore_ascii_case("true") {
                    Value::Bool(true)
                } else if text.eq_ignore_ascii_case("false") {
                    Value::Bool(false)
                } else {
                    return Err(bad());
                }
            }
        };
        Ok(Some(value))
    }
}

impl Property {
    fn check(&self, value: &Value) -> Result<(), String> {
        let name = &self.name;
        if value.is_null() {
            return if self.nullable {
                Ok(())
            } else {
                Err(format!(
                    "field {name:?} is null but must be {} (leave it out, or declare \
                     [\"{}\", \"null\"])",
                    article(self.field_type),
                    self.field_type.name()
                ))
            };
        }
        if !self.field_type.admits(value) {
            return Err(format!(
                "field {name:?} is {value} but must be {}",
                article(self.field_type)
            ));
        }
        if let (Some(max), Value::String(s)) = (self.max_length, value) {
            let chars = s.chars().count() as u64;
            if chars > max {
                return Err(format!(
                    "field {name:?} has {chars} characters, more than maxLength {max}"
                ));
            }
        }
        if let Some(allowed) = &self.allowed
            && !allowed.contains(value)
        {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return Err(format!(
                "field {name:?} is {value}, not one of {}",
                list.join(", ")
            ));
        }
        Ok(())
    }
}

fn article(t: FieldType) -> &'static str {
    match t {
        FieldType::String => "a string",
        FieldType::Integer => "an integer",
        FieldType::Number => "a number",
        FieldType::Boolean => "a boolean (true or false)",
    }
}

fn invalid(at: &str, why: &str) -> SchemaError {
    SchemaError::Invalid {
        at: at.to_owned(),
        why: why.to_owned(),
    }
}

fn property(name: &str, spec: &Value) -> Result<Property, SchemaError> {
    let at = format!("property {name:?}");
    let Value::Object(spec) = spec else {
        return Err(invalid(
            &at,
            "it must be an object such as {\"type\": \"string\"}",
        ));
    };
    for keyword in spec.keys() {
        if !matches!(
            keyword.as_str(),
            "type" | "maxLength" | "enum" | "title" | "description"
        ) {
            return Err(SchemaError::Unsupported {
                at,
                keyword: keyword.clone(),
                supported: PROPERTY_KEYWORDS,
            });
        }
    }
    let type_help = "\"type\" must be \"string\", \"integer\", \"number\" or \"boolean\", \
                     or one of them with \"null\" as in [\"string\", \"null\"]";
    let (field_type, nullable) = match spec.get("type") {
        Some(Value::String(t)) => (FieldType::parse(t), false),
        Some(Value::Array(ts)) => {
            let names: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
            match names.as_slice() {
                [t, "null"] | ["null", t] if names.len() == ts.len() => (FieldType::parse(t), true),
                _ => (None, false),
            }
        }
        _ => (None, false),
    };
    let field_type = field_type.ok_or_else(|| invalid(&at, type_help))?;

    let max_length = match spec.get("maxLength") {
        None => None,
        Some(v) => {
            if field_type != FieldType::String {
                return Err(invalid(&at, "\"maxLength\" applies to strings only"));
            }
            Some(
                v.as_u64()
                    .ok_or_else(|| invalid(&at, "\"maxLength\" must be a non-negative integer"))?,
            )
        }
    };
    let allowed = match spec.get("enum") {
        None => None,
        Some(Value::Array(values)) if !values.is_empty() => {
            for v in values {
                if !(field_type.admits(v) || (nullable && v.is_null())) {
                    return Err(invalid(
                        &at,
                        &format!("\"enum\" value {v} is not {}", article(field_type)),
                    ));
                }
            }
            Some(values.clone())
        }
        Some(_) => return Err(invalid(&at, "\"enum\" must be a non-empty array")),
    };
    let description = match spec.get("description") {
        None => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(_) => return Err(invalid(&at, "\"description\" must be a string")),
    };
    Ok(Property {
        name: name.to_owned(),
        field_type,
        nullable,
        max_length,
        allowed,
        description,
    })
}

/// Only the order of `properties`, read from the schema text.
#[derive(Deserialize)]
struct PropertyOrder {
    properties: Option<Ordered<IgnoredAny>>,
}

/// A JSON object read as (name, value) pairs in the order written. A name
/// that appears twice is refused rather than silently overwritten.
#[derive(Debug)]
pub(crate) struct Ordered<V>(pub Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pairs<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Pairs<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs: Vec<(String, V)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if pairs.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom(format!(
                            "field {name:?} appears twice"
                        )));
                    }
                    pairs.push((name, map.next_value()?));
                }
                Ok(Ordered(pairs))
            }
        }
        d.deserialize_map(Pairs(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::from_json(
            r#"{"type":"object","properties":{
                "ma":{"type":"string","maxLength":3},
                "ten":{"type":"string","description":"Họ và tên"},
                "gioi_tinh":{"type":"string","enum":["Nam","Nữ"]},
                "tuoi":{"type":["integer","null"]},
                "diem":{"type":"number"},
                "con_song":{"type":"boolean"}},
              "required":["ma","ten"],"additionalProperties":false}"#,
        )
        .unwrap()
    }

    #[test]
    fn properties_keep_the_order_of_the_file() {
        let schema = schema();
        let names: Vec<&str> = schema
            .properties()
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["ma", "ten", "gioi_tinh", "tuoi", "diem", "con_song"]
        );
    }

    #[test]
    fn keywords_outside_the_subset_are_refused() {
        let err = Schema::from_json(
            r#"{"type":"object","properties":{"a":{"type":"string","minLength":1}}}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("\"minLength\" is not supported"),
            "{err}"
        );
        let err = Schema::from_json(r#"{"type":"object","properties":{},"oneOf":[]}"#).unwrap_err();
        assert!(err.to_string().contains("\"oneOf\""), "{err}");
        let err = Schema::from_json(
            r#"{"type":"object","properties":{"a":{"type":"string"}},"required":["b"]}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("\"b\" is not one of the properties"),
            "{err}"
        );
        let err = Schema::from_json(
            r#"{"type":"object","properties":{"a":{"type":"integer","maxLength":2}}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("strings only"), "{err}");
    }

    #[test]
    fn violations_are_all_named() {
        let s = schema();
        let ok = json!({"ma":"A1","ten":"Nguyễn Văn Ánh","gioi_tinh":"Nữ","tuoi":null});
        s.validate(ok.as_object().unwrap()).unwrap();
        let bad = json!({"ma":"ABCD","gioi_tinh":"nu","tuoi":1.5,"x":1});
        let why = s.validate(bad.as_object().unwrap()).unwrap_err();
        for part in [
            "missing required field \"ten\"",
            "more than maxLength 3",
            "not one of \"Nam\", \"Nữ\"",
            "\"tuoi\" is 1.5 but must be an integer",
            "unknown field \"x\"",
        ] {
            assert!(why.contains(part), "{why} lacks {part}");
        }
    }

    #[test]
    fn max_length_counts_characters_not_bytes() {
        let s = schema();
        let rec = json!({"ma":"Ữữữ","ten":"x"});
        s.validate(rec.as_object().unwrap()).unwrap();
    }

    #[test]
    fn csv_cells_are_converted_to_the_schema_types() {
        let s = schema();
        assert_eq!(
            s.convert_csv_value("tuoi", " 42 ").unwrap(),
            Some(json!(42))
        );
        assert_eq!(s.convert_csv_value("tuoi", "").unwrap(), None);
        assert_eq!(
            s.convert_csv_value("diem", "8.5").unwrap(),
            Some(json!(8.5))
        );
        assert_eq!(
            s.convert_csv_value("con_song", "TRUE").unwrap(),
            Some(json!(true))
        );
        assert_eq!(
            s.convert_csv_value("ten", " Lê ").unwrap(),
            Some(json!(" Lê "))
        );
        let err = s.convert_csv_value("tuoi", "bốn mươi").unwrap_err();
        assert!(err.contains("is not an integer"), "{err}");
    }
}
