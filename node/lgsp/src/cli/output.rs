//! `-o json` (`--output json`): every listing command prints either its
//! table, for people, or one JSON document, for scripts and monitoring, from
//! the same rows. The document is
//! `{"kind": "<what is listed>", "items": [...], ...}`, with the listing's
//! other facts (the catalog revision it was read at, say) beside `items`.
//! Field names are snake_case and stable: a field may be added, never
//! renamed or removed; times are RFC 3339 with the province's offset.

use anyhow::Result;
use clap::{Args, ValueEnum};
use serde_json::{Map, Value};
use std::io::Write;

/// How a listing is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub(crate) enum Format {
    /// A table for people (the default).
    #[default]
    Text,
    /// One JSON document on standard output.
    Json,
}

/// The `-o`/`--output` flag every listing command takes.
#[derive(Debug, Clone, Copy, Args)]
pub(crate) struct OutputArgs {
    /// Output format: text (a table for people) or json (one document,
    /// {"kind": ..., "items": [...]}, with field names that stay stable).
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        value_name = "FORMAT",
        default_value_t = Format::Text
    )]
    pub(crate) format: Format,
}

/// One listing: rows, each as a line of text and as a JSON object.
#[derive(Debug)]
pub(crate) struct Listing {
    kind: &'static str,
    header: Option<String>,
    lines: Vec<String>,
    items: Vec<Value>,
    facts: Map<String, Value>,
    footer: Option<String>,
    empty: Option<String>,
}

impl Listing {
    /// An empty listing of `kind` (plural: "grants", "nodes").
    pub(crate) fn new(kind: &'static str) -> Self {
        Self {
            kind,
            header: None,
            lines: Vec::new(),
            items: Vec::new(),
            facts: Map::new(),
            footer: None,
            empty: None,
        }
    }

    /// The table's header line (text only).
    pub(crate) fn header(mut self, line: impl Into<String>) -> Self {
        self.header = Some(line.into());
        self
    }

    /// What the text says when there is no row (instead of the header).
    pub(crate) fn when_empty(mut self, line: impl Into<String>) -> Self {
        self.empty = Some(line.into());
        self
    }

    /// Adds a row: `line` for people (may span several lines), `item` for scripts.
    pub(crate) fn row(&mut self, line: impl Into<String>, item: Value) {
        self.lines.push(line.into());
        self.items.push(item);
    }

    /// Adds an item to the JSON alone, for a listing whose text is drawn
    /// whole (in sections, with [`Self::header`]).
    pub(crate) fn item(&mut self, item: Value) {
        self.items.push(item);
    }

    /// A fact about the whole listing, beside `items` in JSON.
    pub(crate) fn fact(&mut self, name: &str, value: impl Into<Value>) {
        self.facts.insert(name.to_owned(), value.into());
    }

    /// The last line of the text (a count, the revision).
    pub(crate) fn footer(&mut self, line: impl Into<String>) {
        self.footer = Some(line.into());
    }

    /// The JSON items so far.
    pub(crate) fn items(&self) -> &[Value] {
        &self.items
    }

    /// How many rows.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// The JSON document.
    pub(crate) fn to_json(&self) -> Value {
        let mut doc = Map::new();
        doc.insert("kind".into(), self.kind.into());
        for (k, v) in &self.facts {
            doc.insert(k.clone(), v.clone());
        }
        doc.insert("items".into(), Value::Array(self.items.clone()));
        Value::Object(doc)
    }

    /// The text.
    pub(crate) fn to_text(&self) -> String {
        let mut out = String::new();
        match (&self.empty, self.lines.is_empty()) {
            (Some(empty), true) => {
                out.push_str(empty);
                out.push('\n');
            }
            _ => {
                if let Some(h) = &self.header {
                    out.push_str(h);
                    out.push('\n');
                }
                for l in &self.lines {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        if let Some(f) = &self.footer {
            out.push_str(f);
            out.push('\n');
        }
        out
    }
}

impl OutputArgs {
    /// Prints `listing` in the chosen format.
    pub(crate) fn print(&self, listing: &Listing) -> Result<()> {
        let text = match self.format {
            Format::Text => listing.to_text(),
            Format::Json => format!("{:#}\n", listing.to_json()),
        };
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        Ok(())
    }
}

/// A Unix time as RFC 3339 in the province's zone, or null when unset (0).
pub(crate) fn time(cal: &lgsp_registry::calendar::WorkCalendar, unix: i64) -> Value {
    if unix == 0 {
        return Value::Null;
    }
    let Ok(at) = jiff::Timestamp::from_second(unix) else {
        return Value::Null;
    };
    let zone = jiff::tz::TimeZone::get(cal.time_zone()).unwrap_or(jiff::tz::TimeZone::UTC);
    Value::String(
        at.to_zoned(zone)
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Listing {
        let mut l = Listing::new("nodes").header("NODE  ENDPOINT");
        l.row("a/n1  h:1", json!({"agency": "a", "name": "n1"}));
        l.row("b/n1  h:2", json!({"agency": "b", "name": "n1"}));
        l.fact("catalog_revision", 7);
        l.footer("(catalog revision 7)");
        l
    }

    #[test]
    fn json_carries_the_kind_the_facts_and_every_row() {
        let doc = sample().to_json();
        assert_eq!(doc["kind"], "nodes");
        assert_eq!(doc["catalog_revision"], 7);
        assert_eq!(doc["items"][1]["agency"], "b");
        assert_eq!(doc["items"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn times_are_rfc3339_on_the_provinces_clocks_and_unset_is_null() {
        let cal = lgsp_registry::calendar::WorkCalendar::from_record(None).unwrap();
        assert_eq!(
            time(&cal, 1_796_601_600),
            json!("2026-12-07T07:00:00+07:00")
        );
        assert_eq!(time(&cal, 0), Value::Null);
    }

    #[test]
    fn text_has_the_header_the_rows_and_the_footer_in_order() {
        assert_eq!(
            sample().to_text(),
            "NODE  ENDPOINT\na/n1  h:1\nb/n1  h:2\n(catalog revision 7)\n"
        );
        let empty = Listing::new("nodes").header("H").when_empty("no nodes");
        assert_eq!(empty.to_text(), "no nodes\n");
        assert_eq!(empty.to_json()["items"], json!([]));
    }
}
