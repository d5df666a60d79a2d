//! Structured files: one record per JSON line (jsonl) or CSV row, the schema's fields found by
//! name or alias. A record that breaks a rule is an error naming its line or row.

use std::borrow::Cow;
use std::collections::HashMap;

use super::{ParseError, ParseLimits, ParsedRecord, RecordSchema, lines, normalize, push_record};

/// A field of a structured record: the key or column names accepted for it, canonical name
/// first, and whether a JSON number may stand for it (labels such as `5`).
struct FieldSpec {
    names: &'static [&'static str],
    numbers_allowed: bool,
}

const TEXT: FieldSpec = FieldSpec { names: &["text", "content"], numbers_allowed: false };
const INSTRUCTION: FieldSpec = FieldSpec { names: &["instruction", "prompt", "question"], numbers_allowed: false };
const RESPONSE: FieldSpec =
    FieldSpec { names: &["response", "completion", "output", "answer"], numbers_allowed: false };
const LABEL: FieldSpec = FieldSpec { names: &["label"], numbers_allowed: true };

impl FieldSpec {
    fn name(&self) -> &'static str {
        self.names[0]
    }
}

impl RecordSchema {
    fn fields(self) -> &'static [FieldSpec] {
        match self {
            Self::FreeText => &[TEXT],
            Self::InstructionResponse => &[INSTRUCTION, RESPONSE],
            Self::LabelledText => &[TEXT, LABEL],
        }
    }
}

/// A field's raw value as found, or the type found instead of a string.
type RawField<'a> = Result<Cow<'a, str>, &'static str>;

/// Builds a record from the schema's fields, looked up by their position in the schema and their
/// spec; `location` names the line or row.
fn structured_record<'a>(
    schema: RecordSchema,
    location: String,
    limits: &ParseLimits,
    lookup: impl Fn(usize, &FieldSpec) -> Option<RawField<'a>>,
) -> Result<ParsedRecord, ParseError> {
    let mut values = Vec::with_capacity(2);
    for (position, spec) in schema.fields().iter().enumerate() {
        let field = spec.name();
        let raw = lookup(position, spec)
            .ok_or_else(|| ParseError::MissingField { location: location.clone(), field, schema })?
            .map_err(|found| ParseError::FieldNotText { location: location.clone(), field, found })?;
        let value = normalize(&raw);
        if value.is_empty() {
            return Err(ParseError::EmptyField { location, field });
        }
        values.push(value);
    }
    let chars: usize = values.iter().map(|value| value.chars().count()).sum();
    if chars > limits.max_record_chars {
        return Err(ParseError::RecordTooLong { location, chars, max: limits.max_record_chars });
    }
    let mut values = values.into_iter();
    let text = values.next().unwrap_or_default();
    let second = values.next();
    let (response, label) = match schema {
        RecordSchema::FreeText => (None, None),
        RecordSchema::InstructionResponse => (second, None),
        RecordSchema::LabelledText => (None, second),
    };
    Ok(ParsedRecord { text, response, label, source: location })
}

pub(super) fn parse_jsonl(
    text: &str,
    schema: RecordSchema,
    limits: &ParseLimits,
) -> Result<Vec<ParsedRecord>, ParseError> {
    let mut records = Vec::new();
    for (index, line) in lines(text).enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let number = index + 1;
        let object = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(object)) => object,
            Ok(other) => return Err(ParseError::NotAnObject { line: number, found: json_type(&other) }),
            Err(error) => return Err(invalid_json(number, &error)),
        };
        let record = structured_record(schema, format!("line {number}"), limits, |_, spec| {
            let value = spec.names.iter().find_map(|name| object.get(*name))?;
            Some(match value {
                serde_json::Value::String(text) => Ok(Cow::Borrowed(text.as_str())),
                serde_json::Value::Number(number) if spec.numbers_allowed => Ok(Cow::Owned(number.to_string())),
                other => Err(json_type(other)),
            })
        })?;
        push_record(&mut records, record, limits)?;
    }
    Ok(records)
}

fn invalid_json(line: usize, error: &serde_json::Error) -> ParseError {
    // serde_json ends its message with the position, which is on this one line.
    let message = error.to_string();
    let reason = message.rsplit_once(" at line ").map_or(message.as_str(), |(reason, _)| reason);
    ParseError::InvalidJson { line, column: error.column(), reason: reason.to_owned() }
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Rows are numbered by record, the header being row 1; blank lines are not rows.
pub(super) fn parse_csv(
    text: &str,
    schema: RecordSchema,
    limits: &ParseLimits,
) -> Result<Vec<ParsedRecord>, ParseError> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
    let header = reader.headers().map_err(|error| csv_error(1, error))?.clone();
    let mut columns: HashMap<String, usize> = HashMap::new();
    for (index, name) in header.iter().enumerate() {
        columns.entry(name.trim().to_lowercase()).or_insert(index);
    }
    let mut field_columns = Vec::new();
    for spec in schema.fields() {
        let column = spec.names.iter().find_map(|name| columns.get(*name).copied());
        field_columns.push(column.ok_or(ParseError::MissingColumn { names: spec.names, schema })?);
    }
    let mut records = Vec::new();
    let mut row = csv::StringRecord::new();
    loop {
        let row_number = reader.position().record() + 1;
        match reader.read_record(&mut row) {
            Ok(false) => break,
            Ok(true) => {}
            Err(error) => return Err(csv_error(row_number, error)),
        }
        if row.iter().all(|field| field.trim().is_empty()) {
            continue;
        }
        let record = structured_record(schema, format!("row {row_number}"), limits, |position, _| {
            row.get(field_columns[position]).map(|value| Ok(Cow::Borrowed(value)))
        })?;
        push_record(&mut records, record, limits)?;
    }
    Ok(records)
}

fn csv_error(row: u64, error: csv::Error) -> ParseError {
    let reason = match error.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("has {len} fields, the header has {expected_len}")
        }
        _ => error.to_string(),
    };
    ParseError::Csv { row, reason }
}
