//! Turns an uploaded file into normalized records: it owns file-kind detection, decoding of the
//! six accepted kinds (txt, md, jsonl, csv, pdf, docx), text normalization, chunking of prose and
//! the canonical bytes a record's content hash is taken over. It does not check labels, score
//! quality or find duplicates: the caller does that with the records this returns.
//!
//! Prose (txt, md, pdf, docx) only makes free-text records: paragraphs (split at blank lines) are
//! packed into chunks of about `chunk_target_chars`, a heading (markdown `#`..`######`, a docx
//! paragraph styled `Heading…`) starts a new chunk and stays with the text after it, and a
//! paragraph longer than `max_record_chars` is cut at sentence ends, else at whitespace. Structured
//! files (jsonl, csv) map fields by name, one record per line or row, and a record that breaks a
//! rule is an error naming its line or row: a structured record is never silently cut.
//!
//! Uploads are untrusted, so all work is bounded by [`ParseLimits`]: the record count, the record
//! size and the bytes inflated from a docx (zip) or pdf (streams). The pdf reader is `lopdf`: it is
//! maintained, pure Rust, bounds every stream it inflates (`LoadOptions::max_decompressed_size`)
//! and limits object nesting. `pdf-extract` lays text out better (it places words by position) but
//! pins lopdf 0.42, from before those bounds, and its 0.12 source holds some 70 `unwrap`/`expect`
//! and 30 `panic!` on the way from a damaged file to its text. lopdf may still panic on a damaged
//! file, so it runs under `catch_unwind`. The bytes inflated for page contents and font maps are
//! counted against one budget for the whole file, because a stream shared by many pages would
//! otherwise be inflated once per page, and the text operators are read here (`page_text`) in one
//! pass over the pages. Text inside form XObjects is not extracted.
//!
//! The fuzz targets are the proptest cases at the end of this file: for every kind, arbitrary
//! bytes and mutations (byte flips, truncations) of a valid sample must return `Ok` or `Err`
//! within the limits, never panic.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{Cursor, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};

use lopdf::content::Content;
use lopdf::{DecompressError, Document, Encoding, LoadOptions, Object, ObjectId};
use quick_xml::events::{BytesStart, Event};
use unicode_normalization::UnicodeNormalization;

/// What one record of a datanet holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordSchema {
    FreeText,
    InstructionResponse,
    LabelledText,
}

impl RecordSchema {
    fn fields(self) -> &'static [FieldSpec] {
        match self {
            Self::FreeText => &[TEXT],
            Self::InstructionResponse => &[INSTRUCTION, RESPONSE],
            Self::LabelledText => &[TEXT, LABEL],
        }
    }

    fn required_fields(self) -> &'static str {
        match self {
            Self::FreeText => "\"text\"",
            Self::InstructionResponse => "\"instruction\" and \"response\"",
            Self::LabelledText => "\"text\" and \"label\"",
        }
    }
}

impl fmt::Display for RecordSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FreeText => "free-text",
            Self::InstructionResponse => "instruction/response",
            Self::LabelledText => "labelled-text",
        })
    }
}

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

/// The kind of an uploaded file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Text,
    Markdown,
    Jsonl,
    Csv,
    Pdf,
    Docx,
}

const ACCEPTED_KINDS: &str = ".txt, .md, .jsonl, .csv, .pdf or .docx";

impl FileKind {
    /// From the media type if it is specific, else from the file name's extension.
    ///
    /// `text/plain` gives way to a `.md`, `.jsonl` or `.csv` extension: browsers and `curl -F`
    /// label those files `text/plain`, and the extension is then the better witness.
    pub fn detect(file_name: &str, media_type: &str) -> Result<FileKind, ParseError> {
        let from_name = Self::from_extension(file_name);
        let detected = match Self::from_media_type(media_type) {
            Some(FileKind::Text) if from_name.is_some_and(|kind| kind != FileKind::Pdf && kind != FileKind::Docx) => {
                from_name
            }
            Some(kind) => Some(kind),
            None => from_name,
        };
        detected.ok_or_else(|| ParseError::UnknownKind {
            file_name: file_name.to_owned(),
            media_type: media_type.to_owned(),
        })
    }

    fn from_media_type(media_type: &str) -> Option<FileKind> {
        let essence = media_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        Some(match essence.as_str() {
            "text/plain" => Self::Text,
            "text/markdown" | "text/x-markdown" => Self::Markdown,
            "application/jsonl" | "application/x-ndjson" | "application/x-jsonlines" | "application/json" => {
                Self::Jsonl
            }
            "text/csv" => Self::Csv,
            "application/pdf" => Self::Pdf,
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => Self::Docx,
            _ => return None,
        })
    }

    fn from_extension(file_name: &str) -> Option<FileKind> {
        let (_, extension) = file_name.rsplit_once('.')?;
        Some(match extension.to_ascii_lowercase().as_str() {
            "txt" => Self::Text,
            "md" | "markdown" => Self::Markdown,
            "jsonl" | "ndjson" | "json" => Self::Jsonl,
            "csv" => Self::Csv,
            "pdf" => Self::Pdf,
            "docx" => Self::Docx,
            _ => return None,
        })
    }

    fn is_prose(self) -> bool {
        matches!(self, Self::Text | Self::Markdown | Self::Pdf | Self::Docx)
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "txt",
            Self::Markdown => "md",
            Self::Jsonl => "jsonl",
            Self::Csv => "csv",
            Self::Pdf => "pdf",
            Self::Docx => "docx",
        })
    }
}

/// Bounds on the work one file may cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseLimits {
    pub max_records: usize,
    /// Longest record, in characters (Unicode scalar values) over all its fields.
    pub max_record_chars: usize,
    /// Size prose chunks are packed to.
    pub chunk_target_chars: usize,
    /// Bytes a docx may inflate to (its `word/document.xml`) and a pdf's streams together.
    pub max_decompressed_bytes: u64,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_records: 100_000,
            max_record_chars: 16_384,
            chunk_target_chars: 1_000,
            max_decompressed_bytes: 64 << 20,
        }
    }
}

/// One record: its fields in a fixed order, already normalized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRecord {
    /// The free text, the labelled text or the instruction.
    pub text: String,
    pub response: Option<String>,
    pub label: Option<String>,
    /// Where the record starts in the file (`line 12`, `row 3`, `paragraph 4`, `page 2`).
    pub source: String,
}

impl ParsedRecord {
    /// Canonical bytes of the record: compact JSON with the schema's keys in a fixed order, only
    /// present fields: `{"text":..}`, `{"instruction":..,"response":..}`, `{"text":..,"label":..}`.
    /// The record's content hash is BLAKE3 of these bytes (`openledger_core::record`).
    pub fn canonical_json(&self, schema: RecordSchema) -> Vec<u8> {
        let fields: [(&str, Option<&str>); 2] = match schema {
            RecordSchema::FreeText => [("text", Some(&self.text)), ("", None)],
            RecordSchema::InstructionResponse => {
                [("instruction", Some(&self.text)), ("response", self.response.as_deref())]
            }
            RecordSchema::LabelledText => [("text", Some(&self.text)), ("label", self.label.as_deref())],
        };
        let present: Vec<(&str, &str)> = fields.into_iter().filter_map(|(key, value)| Some((key, value?))).collect();
        openledger_core::record::canonical_json(&present)
    }

    /// The text near-duplicate detection compares: the text and the response joined by `\n`.
    /// The label is left out: it classifies the text rather than adding to it, so the same text
    /// under another label is still the same contribution.
    pub fn dedup_text(&self) -> String {
        match &self.response {
            Some(response) => format!("{}\n{response}", self.text),
            None => self.text.clone(),
        }
    }
}

/// A JSON string literal as serde_json writes one: `"` and `\` escaped, the short escapes for
/// backspace, form feed, newline, carriage return and tab, `\u00xx` for the other control
/// characters, everything else as UTF-8.
/// Why a file could not be turned into records. Every message says what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("cannot tell the kind of {file_name:?} (media type {media_type:?}): upload a {ACCEPTED_KINDS} file")]
    UnknownKind { file_name: String, media_type: String },
    #[error("the file is empty")]
    Empty,
    #[error("{kind}: invalid UTF-8 at byte {offset}: save the file as UTF-8")]
    InvalidUtf8 { kind: FileKind, offset: usize },
    #[error("{kind} files hold free text only: {schema} records need a .jsonl or .csv file")]
    SchemaNeedsStructuredFile { kind: FileKind, schema: RecordSchema },
    #[error("line {line}: invalid JSON at column {column}: {reason}")]
    InvalidJson { line: usize, column: usize, reason: String },
    #[error("line {line}: expected a JSON object, found {found}")]
    NotAnObject { line: usize, found: &'static str },
    #[error("csv header: no column named {}: {schema} records need {}", quoted(.names), .schema.required_fields())]
    MissingColumn { names: &'static [&'static str], schema: RecordSchema },
    #[error("{location}: missing field \"{field}\" ({schema} records need {})", .schema.required_fields())]
    MissingField { location: String, field: &'static str, schema: RecordSchema },
    #[error("{location}: field \"{field}\" must be a string, found {found}")]
    FieldNotText { location: String, field: &'static str, found: &'static str },
    #[error("{location}: field \"{field}\" is empty after normalization")]
    EmptyField { location: String, field: &'static str },
    #[error("{location}: the record has {chars} characters, more than the {max} allowed: split it")]
    RecordTooLong { location: String, chars: usize, max: usize },
    #[error("csv row {row}: {reason}")]
    Csv { row: u64, reason: String },
    #[error("csv: the file has a header but no rows")]
    NoRows,
    #[error("{kind}: the file has no text")]
    NoText { kind: FileKind },
    #[error("pdf: no text layer (scanned image?): run OCR on it or upload its text")]
    NoTextLayer,
    #[error("more than {max} records: split the file into smaller uploads")]
    TooManyRecords { max: usize },
    #[error("{kind}: decompressed size exceeds {}: split the file into smaller uploads", human_bytes(*.max_bytes))]
    DecompressedTooLarge { kind: FileKind, max_bytes: u64 },
    #[error("{kind}: {reason}")]
    Corrupt { kind: FileKind, reason: String },
}

fn quoted(names: &[&str]) -> String {
    names.iter().map(|name| format!("\"{name}\"")).collect::<Vec<_>>().join(" or ")
}

fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

fn corrupt(kind: FileKind, reason: impl Into<String>) -> ParseError {
    ParseError::Corrupt { kind, reason: reason.into() }
}

/// Parses an uploaded file into normalized records of the schema.
pub fn parse(
    kind: FileKind,
    bytes: &[u8],
    schema: RecordSchema,
    limits: &ParseLimits,
) -> Result<Vec<ParsedRecord>, ParseError> {
    if kind.is_prose() && schema != RecordSchema::FreeText {
        return Err(ParseError::SchemaNeedsStructuredFile { kind, schema });
    }
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    let records = match kind {
        FileKind::Text | FileKind::Markdown => {
            let text = decode_utf8(kind, bytes)?;
            pack(text_blocks(text, kind == FileKind::Markdown, |line| format!("line {line}")), limits)?
        }
        FileKind::Jsonl => parse_jsonl(decode_utf8(kind, bytes)?, schema, limits)?,
        FileKind::Csv => parse_csv(decode_utf8(kind, bytes)?, schema, limits)?,
        FileKind::Pdf => return pdf_records(bytes, limits),
        FileKind::Docx => pack(docx_blocks(bytes, limits)?, limits)?,
    };
    if records.is_empty() {
        return Err(if kind == FileKind::Csv { ParseError::NoRows } else { ParseError::NoText { kind } });
    }
    Ok(records)
}

/// Normalizes text: Unicode NFC, CRLF and CR to LF, control characters other than `\n` and
/// `\t` dropped, runs of tabs, spaces and other Unicode whitespace (no-break, ideographic…) to
/// one space, each line trimmed, runs of blank lines to one, the whole trimmed. Idempotent:
/// `normalize(normalize(x)) == normalize(x)`.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank_lines = 0;
    for line in lines(text) {
        let line = clean_line(line);
        if line.is_empty() {
            blank_lines += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_lines > 0 { "\n\n" } else { "\n" });
        }
        out.push_str(&line);
        blank_lines = 0;
    }
    // Most text is already NFC (all ASCII is): the quick check spares rebuilding it.
    if unicode_normalization::is_nfc_quick(out.chars()) == unicode_normalization::IsNormalized::Yes {
        return out;
    }
    out.nfc().collect()
}

/// The lines of a text ended by LF, CRLF or a lone CR.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').flat_map(|line| line.strip_suffix('\r').unwrap_or(line).split('\r'))
}

/// One line without control characters, whitespace runs as one space, trimmed.
fn clean_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut pending_space = false;
    for c in line.chars() {
        if c.is_whitespace() {
            pending_space = true;
        } else if !c.is_control() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.push(c);
        }
    }
    out
}

fn decode_utf8(kind: FileKind, bytes: &[u8]) -> Result<&str, ParseError> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let (skipped, body) = match bytes.strip_prefix(BOM) {
        Some(body) => (BOM.len(), body),
        None => (0, bytes),
    };
    let text = std::str::from_utf8(body)
        .map_err(|error| ParseError::InvalidUtf8 { kind, offset: skipped + error.valid_up_to() })?;
    if text.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(text)
}

// ---------------------------------------------------------------------------------------------
// Prose: paragraphs (blocks) packed into chunks.

/// A paragraph or heading of prose, normalized, with where it starts.
#[derive(Debug)]
struct Block {
    text: String,
    source: String,
    heading: bool,
}

/// Blocks of plain text or markdown: paragraphs split at blank lines; in markdown a heading line
/// (outside fenced code) is a block of its own. `locate` names a 1-based line number.
fn text_blocks(text: &str, markdown: bool, locate: impl Fn(usize) -> String) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut paragraph: Option<Block> = None;
    let mut in_fence = false;
    for (index, line) in lines(text).enumerate() {
        let line = normalize(line);
        if line.is_empty() {
            blocks.extend(paragraph.take());
            continue;
        }
        if markdown && (line.starts_with("```") || line.starts_with("~~~")) {
            in_fence = !in_fence;
        }
        if markdown && !in_fence && is_markdown_heading(&line) {
            blocks.extend(paragraph.take());
            blocks.push(Block { text: line, source: locate(index + 1), heading: true });
            continue;
        }
        match &mut paragraph {
            Some(block) => {
                block.text.push('\n');
                block.text.push_str(&line);
            }
            None => paragraph = Some(Block { text: line, source: locate(index + 1), heading: false }),
        }
    }
    blocks.extend(paragraph);
    blocks
}

fn is_markdown_heading(line: &str) -> bool {
    let hashes = line.bytes().take_while(|&byte| byte == b'#').count();
    (1..=6).contains(&hashes) && matches!(line.as_bytes().get(hashes), None | Some(b' '))
}

/// A chunk being packed.
#[derive(Default)]
struct Chunk {
    text: String,
    chars: usize,
    source: String,
    has_body: bool,
}

/// Packs blocks into records of about `chunk_target_chars`, never more than `max_record_chars`.
/// A heading starts a new chunk, and a chunk holding only headings takes the next paragraph
/// whatever its size, so a heading stays with the text it introduces.
fn pack(blocks: Vec<Block>, limits: &ParseLimits) -> Result<Vec<ParsedRecord>, ParseError> {
    let max_chars = limits.max_record_chars.max(1);
    let target_chars = limits.chunk_target_chars.clamp(1, max_chars);
    let mut records = Vec::new();
    let mut chunk = Chunk::default();
    for block in blocks.into_iter().flat_map(|block| split_block(block, max_chars, target_chars)) {
        let chars = block.text.chars().count();
        let joined_chars = chunk.chars + 2 + chars;
        let chunk_full = chunk.has_body && (block.heading || joined_chars > target_chars);
        if chunk.chars > 0 && (chunk_full || joined_chars > max_chars) {
            push_chunk(&mut records, std::mem::take(&mut chunk), limits)?;
        }
        if chunk.chars == 0 {
            chunk.source = block.source;
        } else {
            chunk.text.push_str("\n\n");
            chunk.chars += 2;
        }
        chunk.text.push_str(&block.text);
        chunk.chars += chars;
        chunk.has_body |= !block.heading;
    }
    if chunk.chars > 0 {
        push_chunk(&mut records, chunk, limits)?;
    }
    Ok(records)
}

fn push_chunk(records: &mut Vec<ParsedRecord>, chunk: Chunk, limits: &ParseLimits) -> Result<(), ParseError> {
    // Chunks are cut from normalized text at whitespace, so this changes nothing but keeps the
    // promise that every record is normalized.
    let text = normalize(&chunk.text);
    if text.is_empty() {
        return Ok(());
    }
    push_record(records, ParsedRecord { text, response: None, label: None, source: chunk.source }, limits)
}

fn push_record(records: &mut Vec<ParsedRecord>, record: ParsedRecord, limits: &ParseLimits) -> Result<(), ParseError> {
    if records.len() >= limits.max_records {
        return Err(ParseError::TooManyRecords { max: limits.max_records });
    }
    records.push(record);
    Ok(())
}

/// A block longer than `max_chars` cut into pieces of at most `piece_chars`.
fn split_block(block: Block, max_chars: usize, piece_chars: usize) -> Vec<Block> {
    if block.text.chars().count() <= max_chars {
        return vec![block];
    }
    split_long(&block.text, piece_chars)
        .into_iter()
        .map(|piece| Block { text: piece.to_owned(), source: block.source.clone(), heading: false })
        .collect()
}

/// Cuts text into pieces of at most `piece_chars` characters: at the last sentence end (`. `,
/// `! `, `? `) that fits, else at the last whitespace, else (one very long word) at the limit.
fn split_long(text: &str, piece_chars: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text.trim();
    while let Some((window_end, _)) = rest.char_indices().nth(piece_chars) {
        let window = &rest[..window_end];
        let cut = last_sentence_end(window)
            .or_else(|| window.rfind(char::is_whitespace))
            .filter(|&cut| cut > 0)
            .unwrap_or(window_end);
        pieces.push(rest[..cut].trim_end());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    pieces
}

/// The byte index of the whitespace after the last `.`, `!` or `?` that ends a sentence.
fn last_sentence_end(window: &str) -> Option<usize> {
    let bytes = window.as_bytes();
    (1..bytes.len())
        .rev()
        .find(|&index| matches!(bytes[index - 1], b'.' | b'!' | b'?') && matches!(bytes[index], b' ' | b'\n'))
}

// ---------------------------------------------------------------------------------------------
// Structured files: one record per JSON line or CSV row, fields found by name.

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

fn parse_jsonl(text: &str, schema: RecordSchema, limits: &ParseLimits) -> Result<Vec<ParsedRecord>, ParseError> {
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
fn parse_csv(text: &str, schema: RecordSchema, limits: &ParseLimits) -> Result<Vec<ParsedRecord>, ParseError> {
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

// ---------------------------------------------------------------------------------------------
// docx: word/document.xml in a zip.

const DOCUMENT_XML: &str = "word/document.xml";

fn docx_blocks(bytes: &[u8], limits: &ParseLimits) -> Result<Vec<Block>, ParseError> {
    let too_large = ParseError::DecompressedTooLarge { kind: FileKind::Docx, max_bytes: limits.max_decompressed_bytes };
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|error| corrupt(FileKind::Docx, format!("not a readable zip archive ({error})")))?;
    let entry = archive.by_name(DOCUMENT_XML).map_err(|error| match error {
        zip::result::ZipError::FileNotFound => {
            corrupt(FileKind::Docx, format!("{DOCUMENT_XML} is missing: is this a Word document?"))
        }
        error => corrupt(FileKind::Docx, format!("cannot open {DOCUMENT_XML} ({error})")),
    })?;
    // The declared size can lie, so it only turns away the honest giants; `take` bounds the rest.
    if entry.size() > limits.max_decompressed_bytes {
        return Err(too_large);
    }
    let mut xml = Vec::new();
    entry
        .take(limits.max_decompressed_bytes.saturating_add(1))
        .read_to_end(&mut xml)
        .map_err(|error| corrupt(FileKind::Docx, format!("cannot inflate {DOCUMENT_XML} ({error})")))?;
    if xml.len() as u64 > limits.max_decompressed_bytes {
        return Err(too_large);
    }
    document_xml_blocks(&xml)
}

/// A `<w:p>` being read.
#[derive(Default)]
struct DocxParagraph {
    text: String,
    heading: bool,
}

/// Paragraphs of a WordprocessingML body: `<w:t>` text, `<w:tab/>` and `<w:br/>` inside runs,
/// headings from a paragraph style starting with `Heading`. Paragraphs count from 1 in document
/// order, empty ones included, so a source points at the same paragraph in the file.
fn document_xml_blocks(xml: &[u8]) -> Result<Vec<Block>, ParseError> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut buffer = Vec::new();
    let mut blocks = Vec::new();
    // Text boxes nest paragraphs inside paragraphs.
    let mut open: Vec<(usize, DocxParagraph)> = Vec::new();
    let mut paragraphs = 0;
    let (mut run_depth, mut in_text) = (0usize, false);
    loop {
        let event = reader.read_event_into(&mut buffer).map_err(|error| {
            let position = reader.error_position();
            corrupt(FileKind::Docx, format!("bad XML in {DOCUMENT_XML} at byte {position}: {error}"))
        })?;
        match event {
            Event::Start(element) => match element.local_name().as_ref() {
                b"p" => {
                    paragraphs += 1;
                    open.push((paragraphs, DocxParagraph::default()));
                }
                b"r" => run_depth += 1,
                b"t" => in_text = run_depth > 0,
                _ => {}
            },
            Event::Empty(element) => {
                let current = open.last_mut().map(|(_, paragraph)| paragraph);
                match (element.local_name().as_ref(), current) {
                    (b"p", _) => paragraphs += 1,
                    (b"tab", Some(paragraph)) if run_depth > 0 => paragraph.text.push('\t'),
                    (b"br" | b"cr", Some(paragraph)) if run_depth > 0 => paragraph.text.push('\n'),
                    (b"pStyle", Some(paragraph)) => paragraph.heading |= is_heading_style(&element),
                    _ => {}
                }
            }
            Event::Text(text) if in_text => {
                let text =
                    text.xml10_content().map_err(|error| corrupt(FileKind::Docx, format!("bad text ({error})")))?;
                push_docx_text(&mut open, &text);
            }
            Event::GeneralRef(reference) if in_text => {
                let resolved = match reference.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    _ => {
                        let name = String::from_utf8_lossy(&reference);
                        quick_xml::escape::resolve_xml_entity(&name).unwrap_or_default().to_owned()
                    }
                };
                push_docx_text(&mut open, &resolved);
            }
            Event::End(element) => match element.local_name().as_ref() {
                b"p" => {
                    if let Some((number, paragraph)) = open.pop() {
                        let text = normalize(&paragraph.text);
                        if !text.is_empty() {
                            blocks.push(Block {
                                text,
                                source: format!("paragraph {number}"),
                                heading: paragraph.heading,
                            });
                        }
                    }
                }
                b"r" => run_depth = run_depth.saturating_sub(1),
                b"t" => in_text = false,
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
        buffer.clear();
    }
    Ok(blocks)
}

fn push_docx_text(open: &mut [(usize, DocxParagraph)], text: &str) {
    if let Some((_, paragraph)) = open.last_mut() {
        paragraph.text.push_str(text);
    }
}

fn is_heading_style(element: &BytesStart<'_>) -> bool {
    element.attributes().flatten().any(|attribute| {
        attribute.key.local_name().as_ref() == b"val"
            && attribute.value.get(..7).is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"heading"))
    })
}

// ---------------------------------------------------------------------------------------------
// pdf: the text layer, page by page.

fn pdf_records(bytes: &[u8], limits: &ParseLimits) -> Result<Vec<ParsedRecord>, ParseError> {
    if !bytes.starts_with(b"%PDF-") {
        return Err(corrupt(FileKind::Pdf, "not a PDF (no %PDF- header)"));
    }
    let blocks = catch_unwind(AssertUnwindSafe(|| pdf_blocks(bytes, limits))).unwrap_or_else(|_| {
        Err(corrupt(FileKind::Pdf, "the PDF reader failed on this file: it may be damaged, export it again"))
    })?;
    let records = pack(blocks, limits)?;
    if records.is_empty() {
        return Err(ParseError::NoTextLayer);
    }
    Ok(records)
}

/// Bytes of page content and font maps processed so far, against `max_decompressed_bytes`.
struct InflateBudget {
    used: usize,
    max: usize,
    max_bytes: u64,
}

impl InflateBudget {
    fn remaining(&self) -> usize {
        self.max - self.used
    }

    fn charge(&mut self, bytes: usize) -> Result<(), ParseError> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.max {
            return Err(self.exceeded());
        }
        Ok(())
    }

    fn exceeded(&self) -> ParseError {
        ParseError::DecompressedTooLarge { kind: FileKind::Pdf, max_bytes: self.max_bytes }
    }
}

fn pdf_blocks(bytes: &[u8], limits: &ParseLimits) -> Result<Vec<Block>, ParseError> {
    let max = usize::try_from(limits.max_decompressed_bytes).unwrap_or(usize::MAX);
    let mut budget = InflateBudget { used: 0, max, max_bytes: limits.max_decompressed_bytes };
    let options = LoadOptions { max_decompressed_size: Some(max), ..LoadOptions::default() };
    let mut document = Document::load_mem_with_options(bytes, options).map_err(|error| match error {
        lopdf::Error::Decompress(DecompressError::MemoryLimitExceeded { .. }) => budget.exceeded(),
        error => corrupt(FileKind::Pdf, format!("cannot read the file ({error})")),
    })?;
    let mut blocks = Vec::new();
    let mut unreadable = None;
    for (number, page_id) in document.get_pages() {
        inflate_page_streams(&mut document, page_id, &mut budget)?;
        match page_text(&document, page_id, max) {
            Ok(text) => blocks.extend(text_blocks(&text, false, |_| format!("page {number}"))),
            Err(lopdf::Error::Decompress(DecompressError::MemoryLimitExceeded { .. })) => {
                return Err(budget.exceeded());
            }
            // A page that cannot be read costs its text, not the whole file's.
            Err(error) => unreadable = unreadable.or(Some(error.to_string())),
        }
    }
    match unreadable {
        Some(reason) if blocks.is_empty() => {
            Err(corrupt(FileKind::Pdf, format!("could not read the text of any page ({reason})")))
        }
        _ => Ok(blocks),
    }
}

/// Inflates the page's content streams and its fonts' encoding maps in place, each once, and
/// charges their bytes to the budget every time a page uses them.
fn inflate_page_streams(
    document: &mut Document,
    page_id: ObjectId,
    budget: &mut InflateBudget,
) -> Result<(), ParseError> {
    let mut stream_ids = document.get_page_contents(page_id);
    if let Ok(fonts) = document.get_page_fonts(page_id) {
        for font in fonts.values() {
            for key in [b"ToUnicode".as_slice(), b"Encoding"] {
                if let Ok(Object::Reference(id)) = font.get(key) {
                    stream_ids.push(*id);
                }
            }
        }
    }
    for id in stream_ids {
        let Ok(stream) = document.get_object_mut(id).and_then(Object::as_stream_mut) else { continue };
        if stream.dict.has(b"Filter") {
            match stream.decompressed_content_with_limit(budget.remaining()) {
                Ok(plain) => stream.set_plain_content(plain),
                Err(lopdf::Error::Decompress(DecompressError::MemoryLimitExceeded { .. })) => {
                    return Err(budget.exceeded());
                }
                // A damaged stream is left as it is: reading the page's text then fails alone.
                Err(_) => {}
            }
        }
        budget.charge(stream.content.len())?;
    }
    Ok(())
}

/// The text a page shows, in content order: a line break where the text moves to another line,
/// a space where a `TJ` gap is wider than a tenth of an em. Text in a font whose encoding cannot
/// be read is skipped. (lopdf's own `extract_text` walks the whole page tree for every page it
/// is asked for, which is quadratic in the page count.)
fn page_text(document: &Document, page_id: ObjectId, max_bytes: usize) -> Result<String, lopdf::Error> {
    let fonts = document.get_page_fonts(page_id)?;
    let encodings: BTreeMap<&[u8], Encoding<'_>> = fonts
        .iter()
        .filter_map(|(name, font)| {
            Some((name.as_slice(), font.get_font_encoding_with_limit(document, max_bytes).ok()?))
        })
        .collect();
    let content = Content::decode(&document.get_page_content_with_limit(page_id, max_bytes)?)?;
    let mut text = String::new();
    let mut encoding = None;
    let mut line_y = None;
    for operation in &content.operations {
        let operands = operation.operands.as_slice();
        let number = |index: usize| operands.get(index).and_then(|operand| operand.as_float().ok());
        match operation.operator.as_str() {
            "Tf" => {
                encoding = operands.first().and_then(|name| name.as_name().ok()).and_then(|name| encodings.get(name))
            }
            "Tj" | "TJ" => show_text(&mut text, encoding, operands),
            "'" => {
                break_line(&mut text);
                show_text(&mut text, encoding, operands);
            }
            "\"" => {
                break_line(&mut text);
                show_text(&mut text, encoding, operands.get(2..).unwrap_or_default());
            }
            "T*" | "ET" => break_line(&mut text),
            "Td" | "TD" if number(1).is_some_and(|y| y != 0.0) => break_line(&mut text),
            "Tm" => {
                if number(5) != line_y {
                    break_line(&mut text);
                }
                line_y = number(5);
            }
            _ => {}
        }
    }
    Ok(text)
}

/// Appends the strings of `Tj`, `TJ`, `'` and `"` operands; a `TJ` gap wider than 100
/// thousandths of an em becomes a space.
fn show_text(text: &mut String, encoding: Option<&Encoding<'_>>, operands: &[Object]) {
    let Some(encoding) = encoding else { return };
    let pieces = operands.iter().flat_map(|operand| match operand {
        Object::Array(items) => items.as_slice(),
        operand => std::slice::from_ref(operand),
    });
    for piece in pieces {
        match piece {
            Object::String(bytes, _) => text.push_str(&Document::decode_text(encoding, bytes).unwrap_or_default()),
            gap if gap.as_float().is_ok_and(|gap| gap < -100.0) && !text.ends_with(char::is_whitespace) => {
                text.push(' ');
            }
            _ => {}
        }
    }
}

fn break_line(text: &mut String) {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use lopdf::content::Operation;
    use lopdf::{Stream, dictionary};
    use proptest::prelude::*;
    use zip::write::SimpleFileOptions;

    use super::*;

    fn limits() -> ParseLimits {
        ParseLimits::default()
    }

    fn parse_str(kind: FileKind, text: &str, schema: RecordSchema) -> Result<Vec<ParsedRecord>, ParseError> {
        parse(kind, text.as_bytes(), schema, &limits())
    }

    fn error_of(result: Result<Vec<ParsedRecord>, ParseError>) -> String {
        match result {
            Ok(records) => panic!("expected an error, got {records:?}"),
            Err(error) => error.to_string(),
        }
    }

    fn texts(records: &[ParsedRecord]) -> Vec<&str> {
        records.iter().map(|record| record.text.as_str()).collect()
    }

    // ---- fixtures

    /// A docx holding the given `<w:body>` content.
    fn docx(body: &str) -> Vec<u8> {
        let xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>{body}</w:body></w:document>"#
        );
        zip_of(&[(DOCUMENT_XML, xml.as_bytes())])
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let content_types = r#"<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>"#;
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        writer.start_file("[Content_Types].xml", options).expect("zip entry");
        writer.write_all(content_types.as_bytes()).expect("zip write");
        for (name, bytes) in entries {
            writer.start_file(*name, options).expect("zip entry");
            writer.write_all(bytes).expect("zip write");
        }
        writer.finish().expect("zip finish").into_inner()
    }

    fn paragraph(style: Option<&str>, runs: &str) -> String {
        let properties =
            style.map(|style| format!(r#"<w:pPr><w:pStyle w:val="{style}"/></w:pPr>"#)).unwrap_or_default();
        format!("<w:p>{properties}<w:r>{runs}</w:r></w:p>")
    }

    /// A PDF whose pages each show the given lines of text in Courier, compressed or not.
    fn pdf(pages: &[&[&str]], compress: bool) -> Vec<u8> {
        let pages = pages
            .iter()
            .map(|lines| {
                let show = lines.iter().flat_map(|line| {
                    [Operation::new("Tj", vec![Object::string_literal(*line)]), Operation::new("T*", vec![])]
                });
                show.collect()
            })
            .collect();
        pdf_of(pages, compress)
    }

    /// A PDF whose pages each run the given text operations inside `BT`, a 12-point Courier `Tf`
    /// and a `Td` to the top left, and `ET`.
    fn pdf_of(pages: Vec<Vec<Operation>>, compress: bool) -> Vec<u8> {
        let mut document = Document::with_version("1.5");
        let pages_id = document.new_object_id();
        let font_id =
            document.add_object(dictionary! { "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Courier" });
        let resources_id = document.add_object(dictionary! { "Font" => dictionary! { "F1" => font_id } });
        let mut kids = Vec::new();
        for page in pages {
            let mut operations = vec![Operation::new("BT", vec![]), Operation::new("Tf", vec!["F1".into(), 12.into()])];
            operations.push(Operation::new("Td", vec![72.into(), 720.into()]));
            operations.extend(page);
            operations.push(Operation::new("ET", vec![]));
            let content = Content { operations }.encode().expect("content");
            let content_id = document.add_object(Stream::new(dictionary! {}, content));
            let page_id = document.add_object(dictionary! {
                "Type" => "Page", "Parent" => pages_id, "Contents" => content_id,
            });
            kids.push(page_id.into());
        }
        let count = kids.len() as i64;
        document.objects.insert(
            pages_id,
            Object::Dictionary(dictionary! {
                "Type" => "Pages", "Kids" => kids, "Count" => count, "Resources" => resources_id,
                "MediaBox" => vec![0.into(), 0.into(), 612.into(), 792.into()],
            }),
        );
        let catalog_id = document.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
        document.trailer.set("Root", catalog_id);
        if compress {
            document.compress();
        }
        let mut bytes = Vec::new();
        document.save_to(&mut bytes).expect("save pdf");
        bytes
    }

    // ---- detection

    #[test]
    fn kinds_come_from_the_media_type_then_the_extension() {
        let cases = [
            ("notes.bin", "text/plain; charset=utf-8", FileKind::Text),
            ("x", "text/markdown", FileKind::Markdown),
            ("x", "application/x-ndjson", FileKind::Jsonl),
            ("x", "application/json", FileKind::Jsonl),
            ("x", "TEXT/CSV", FileKind::Csv),
            ("x", "application/pdf", FileKind::Pdf),
            ("x", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", FileKind::Docx),
            ("data.JSONL", "application/octet-stream", FileKind::Jsonl),
            ("README.markdown", "", FileKind::Markdown),
            ("rows.csv", "text/plain", FileKind::Csv),
            ("paper.pdf", "text/plain", FileKind::Text),
            ("a.b.ndjson", "", FileKind::Jsonl),
            ("report.docx", "application/zip", FileKind::Docx),
        ];
        for (name, media_type, expected) in cases {
            assert_eq!(FileKind::detect(name, media_type).expect(name), expected, "{name} {media_type}");
        }
        let message = FileKind::detect("photo.png", "image/png").expect_err("unknown").to_string();
        assert!(message.contains("photo.png") && message.contains(".jsonl") && message.contains(".docx"), "{message}");
    }

    // ---- normalization

    #[test]
    fn normalization_composes_unicode_and_tidies_whitespace() {
        assert_eq!(normalize("e\u{301}te\u{301}"), "été");
        assert_eq!(normalize("  a\t\tb   c  \r\n\r\n\r\n\r\nd\re\u{0}\u{7}f\u{a0}g  "), "a b c\n\nd\nef g");
        assert_eq!(normalize("\n\n  \n"), "");
        assert_eq!(normalize("one\n \t \ntwo\n\n\n\nthree"), "one\n\ntwo\n\nthree");
        assert_eq!(normalize("日本語　テキスト"), "日本語 テキスト");
    }

    // ---- canonical form

    #[test]
    fn canonical_json_has_fixed_keys_and_serde_compatible_escapes() {
        let record = ParsedRecord {
            text: "say \"hi\"\\\n\u{1}é".into(),
            response: Some("hello".into()),
            label: Some("greeting".into()),
            source: "line 1".into(),
        };
        let free = String::from_utf8(record.canonical_json(RecordSchema::FreeText)).expect("utf8");
        assert_eq!(free, format!("{{\"text\":{}}}", serde_json::to_string(&record.text).expect("json")));
        assert_eq!(free, r#"{"text":"say \"hi\"\\\n\u0001é"}"#);
        let pair = record.canonical_json(RecordSchema::InstructionResponse);
        assert!(pair.starts_with(b"{\"instruction\":") && pair.ends_with(b",\"response\":\"hello\"}"));
        let labelled = record.canonical_json(RecordSchema::LabelledText);
        assert!(labelled.starts_with(b"{\"text\":") && labelled.ends_with(b",\"label\":\"greeting\"}"));
        let parsed: serde_json::Value = serde_json::from_slice(&labelled).expect("valid json");
        assert_eq!(parsed["text"], record.text.as_str());
        let missing = ParsedRecord { response: None, ..record.clone() };
        let instruction_only = format!("{{\"instruction\":{}}}", serde_json::to_string(&record.text).expect("json"));
        assert_eq!(missing.canonical_json(RecordSchema::InstructionResponse), instruction_only.as_bytes());
        assert_eq!(record.dedup_text(), format!("{}\nhello", record.text));
    }

    // ---- prose

    #[test]
    fn text_is_chunked_by_paragraph_up_to_the_target() {
        let paragraph = "A sentence of about fifty characters, give or take.";
        let text = format!("{paragraph}\r\n{paragraph}\r\n\r\n\r\n{paragraph}\n\n{paragraph}\n\n{paragraph}\n");
        let limits = ParseLimits { chunk_target_chars: 250, ..limits() };
        let records = parse(FileKind::Text, text.as_bytes(), RecordSchema::FreeText, &limits).expect("parses");
        let two_lines = format!("{paragraph}\n{paragraph}");
        assert_eq!(texts(&records), [format!("{two_lines}\n\n{paragraph}\n\n{paragraph}"), paragraph.to_owned()]);
        assert_eq!(records[0].source, "line 1");
        assert_eq!(records[1].source, "line 9");
        assert!(records.iter().all(|record| record.response.is_none() && record.label.is_none()));
    }

    #[test]
    fn markdown_headings_start_chunks_and_keep_their_text() {
        let text =
            "# Title\n## Intro\nFirst paragraph.\n\nSecond paragraph.\n# Next\nThird.\n\n```\n# not a heading\n```\n";
        let records = parse_str(FileKind::Markdown, text, RecordSchema::FreeText).expect("parses");
        assert_eq!(
            texts(&records),
            [
                "# Title\n\n## Intro\n\nFirst paragraph.\n\nSecond paragraph.",
                "# Next\n\nThird.\n\n```\n# not a heading\n```"
            ]
        );
        assert_eq!(records[1].source, "line 6");
    }

    #[test]
    fn a_paragraph_over_the_record_limit_is_cut_at_sentences_then_whitespace() {
        let sentence = "Short sentence here. ";
        let long_paragraph = sentence.repeat(20);
        let limits = ParseLimits { max_record_chars: 100, chunk_target_chars: 50, ..limits() };
        let records =
            parse(FileKind::Text, long_paragraph.as_bytes(), RecordSchema::FreeText, &limits).expect("parses");
        assert!(records.iter().all(|record| record.text.chars().count() <= 50), "{records:?}");
        assert!(records.iter().all(|record| record.text.ends_with('.')), "{records:?}");
        assert_eq!(texts(&records).join(" "), long_paragraph.trim());

        let words = "word ".repeat(60);
        let records = parse(FileKind::Text, words.as_bytes(), RecordSchema::FreeText, &limits).expect("parses");
        assert!(records.iter().all(|record| record.text.chars().count() <= 50 && !record.text.ends_with(' ')));
        let one_word = "x".repeat(230);
        let records = parse(FileKind::Text, one_word.as_bytes(), RecordSchema::FreeText, &limits).expect("parses");
        assert_eq!(records.iter().map(|record| record.text.len()).collect::<Vec<_>>(), [50, 50, 50, 50, 30]);
    }

    #[test]
    fn prose_needs_the_free_text_schema() {
        for kind in [FileKind::Text, FileKind::Markdown, FileKind::Pdf, FileKind::Docx] {
            let message = error_of(parse(kind, b"hello", RecordSchema::InstructionResponse, &limits()));
            assert!(message.contains("instruction/response records need a .jsonl or .csv file"), "{message}");
        }
    }

    #[test]
    fn text_must_be_utf8_and_not_empty() {
        let message = error_of(parse(FileKind::Text, b"\xEF\xBB\xBFgood \xFF bad", RecordSchema::FreeText, &limits()));
        assert!(message.contains("invalid UTF-8 at byte 8"), "{message}");
        let records =
            parse(FileKind::Text, b"\xEF\xBB\xBFbom stripped", RecordSchema::FreeText, &limits()).expect("ok");
        assert_eq!(texts(&records), ["bom stripped"]);
        assert_eq!(error_of(parse_str(FileKind::Text, "", RecordSchema::FreeText)), "the file is empty");
        assert_eq!(error_of(parse_str(FileKind::Jsonl, " \n\n ", RecordSchema::FreeText)), "the file is empty");
        let message = error_of(parse_str(FileKind::Text, "\u{1}\u{2}", RecordSchema::FreeText));
        assert!(message.contains("txt: the file has no text"), "{message}");
    }

    #[test]
    fn too_many_records_is_an_error() {
        let limits = ParseLimits { max_records: 2, chunk_target_chars: 5, ..limits() };
        let message = error_of(parse(FileKind::Text, b"one\n\ntwo\n\nthree", RecordSchema::FreeText, &limits));
        assert!(message.contains("more than 2 records"), "{message}");
        let jsonl = "{\"text\":\"a\"}\n{\"text\":\"b\"}\n{\"text\":\"c\"}";
        let message = error_of(parse(FileKind::Jsonl, jsonl.as_bytes(), RecordSchema::FreeText, &limits));
        assert!(message.contains("more than 2 records"), "{message}");
    }

    // ---- jsonl

    #[test]
    fn jsonl_maps_fields_and_aliases_per_schema() {
        let free = "{\"text\": \"  First  record \"}\n\n{\"content\": \"Second\", \"extra\": 1}\r\n";
        let records = parse_str(FileKind::Jsonl, free, RecordSchema::FreeText).expect("parses");
        assert_eq!(texts(&records), ["First record", "Second"]);
        assert_eq!(records[1].source, "line 3");

        let pairs = concat!(
            "{\"instruction\":\"Add 2 and 2.\",\"response\":\"4\"}\n",
            "{\"prompt\":\"Capital of France?\",\"completion\":\"Paris\"}\n",
            "{\"question\":\"Colour of the sky?\",\"answer\":\"Blue\"}\n",
            "{\"instruction\":\"Say hi\",\"output\":\"Hi\"}",
        );
        let records = parse_str(FileKind::Jsonl, pairs, RecordSchema::InstructionResponse).expect("parses");
        assert_eq!(texts(&records), ["Add 2 and 2.", "Capital of France?", "Colour of the sky?", "Say hi"]);
        let responses: Vec<_> = records.iter().map(|record| record.response.as_deref()).collect();
        assert_eq!(responses, [Some("4"), Some("Paris"), Some("Blue"), Some("Hi")]);

        let labelled = "{\"text\":\"great film\",\"label\":\"positive\"}\n{\"text\":\"five stars\",\"label\":5}";
        let records = parse_str(FileKind::Jsonl, labelled, RecordSchema::LabelledText).expect("parses");
        assert_eq!(
            records.iter().map(|record| record.label.as_deref()).collect::<Vec<_>>(),
            [Some("positive"), Some("5")]
        );
    }

    #[test]
    fn jsonl_errors_name_the_line_and_the_field() {
        let cases: [(&str, RecordSchema, &str); 8] = [
            (
                "{\"instruction\":\"a\",\"response\":\"b\"}\n\n{\"instruction\":\"x\"}",
                RecordSchema::InstructionResponse,
                "line 3: missing field \"response\" (instruction/response records need \"instruction\" and \"response\")",
            ),
            (
                "{\"text\":\"a\"}\n{\"text\": oops}",
                RecordSchema::FreeText,
                "line 2: invalid JSON at column 10: expected value",
            ),
            ("[1, 2]", RecordSchema::FreeText, "line 1: expected a JSON object, found an array"),
            ("{\"text\": 12}", RecordSchema::FreeText, "line 1: field \"text\" must be a string, found a number"),
            (
                "{\"text\":\"a\",\"label\":true}",
                RecordSchema::LabelledText,
                "line 1: field \"label\" must be a string, found a boolean",
            ),
            ("{\"text\":\"a\"}", RecordSchema::LabelledText, "line 1: missing field \"label\""),
            (
                "{\"text\":\" \\u0000\\t \"}",
                RecordSchema::FreeText,
                "line 1: field \"text\" is empty after normalization",
            ),
            ("{\"text\":\"a\"}\n\u{FEFF}{\"text\":\"b\"}", RecordSchema::FreeText, "line 2: invalid JSON"),
        ];
        for (input, schema, expected) in cases {
            let message = error_of(parse_str(FileKind::Jsonl, input, schema));
            assert!(message.contains(expected), "{message:?} should contain {expected:?}");
        }
        let long = format!("{{\"text\":\"{}\"}}", "a".repeat(20));
        let limits = ParseLimits { max_record_chars: 10, ..limits() };
        let message = error_of(parse(FileKind::Jsonl, long.as_bytes(), RecordSchema::FreeText, &limits));
        assert_eq!(message, "line 1: the record has 20 characters, more than the 10 allowed: split it");
    }

    // ---- csv

    #[test]
    fn csv_maps_columns_by_name() {
        let csv = "id,Prompt , Answer\n1,\"What is 2+2?\",4\n\n,,\n2,\"Multi\nline\",\"yes, really\"\n";
        let records = parse_str(FileKind::Csv, csv, RecordSchema::InstructionResponse).expect("parses");
        assert_eq!(texts(&records), ["What is 2+2?", "Multi\nline"]);
        assert_eq!(records[1].response.as_deref(), Some("yes, really"));
        assert_eq!(records.iter().map(|record| record.source.as_str()).collect::<Vec<_>>(), ["row 2", "row 4"]);
        let labelled = "text,label\ngood,1\n";
        let records = parse_str(FileKind::Csv, labelled, RecordSchema::LabelledText).expect("parses");
        assert_eq!(records[0].label.as_deref(), Some("1"));
    }

    #[test]
    fn csv_errors_name_the_row_and_the_column() {
        let cases: [(&str, RecordSchema, &str); 4] = [
            (
                "text,id\nfine,1\n\" \",2\n",
                RecordSchema::FreeText,
                "row 3: field \"text\" is empty after normalization",
            ),
            ("text,label\na,b\nc\n", RecordSchema::LabelledText, "csv row 3: has 1 fields, the header has 2"),
            (
                "instruction,reply\na,b\n",
                RecordSchema::InstructionResponse,
                "csv header: no column named \"response\" or \"completion\" or \"output\" or \"answer\"",
            ),
            ("text\n", RecordSchema::FreeText, "csv: the file has a header but no rows"),
        ];
        for (input, schema, expected) in cases {
            let message = error_of(parse_str(FileKind::Csv, input, schema));
            assert!(message.contains(expected), "{message:?} should contain {expected:?}");
        }
    }

    // ---- docx

    #[test]
    fn docx_paragraphs_runs_and_headings() {
        let body = [
            paragraph(Some("Heading1"), "<w:t>Results</w:t>"),
            paragraph(None, r#"<w:t xml:space="preserve">Yield rose </w:t><w:t>12%</w:t><w:tab/><w:t>in 2023 &amp; 2024&#x21;</w:t>"#),
            "<w:p/>".to_owned(),
            paragraph(None, "<w:t>Line one</w:t><w:br/><w:t>line two</w:t>"),
            paragraph(Some("Heading2"), "<w:t>Method</w:t>"),
            r#"<w:p><w:pPr><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs></w:pPr><w:r><w:t>Plots</w:t></w:r><w:del><w:r><w:delText>gone</w:delText></w:r></w:del></w:p>"#.to_owned(),
        ]
        .concat();
        let records = parse(FileKind::Docx, &docx(&body), RecordSchema::FreeText, &limits()).expect("parses");
        assert_eq!(
            texts(&records),
            ["Results\n\nYield rose 12% in 2023 & 2024!\n\nLine one\nline two", "Method\n\nPlots"]
        );
        assert_eq!(records[0].source, "paragraph 1");
        assert_eq!(records[1].source, "paragraph 5");
    }

    #[test]
    fn broken_docx_files_are_errors() {
        let not_zip = error_of(parse(FileKind::Docx, b"PK\x03\x04 not really", RecordSchema::FreeText, &limits()));
        assert!(not_zip.starts_with("docx: not a readable zip archive"), "{not_zip}");
        let other_zip = zip_of(&[("word/other.xml", b"<x/>")]);
        let missing = error_of(parse(FileKind::Docx, &other_zip, RecordSchema::FreeText, &limits()));
        assert!(missing.contains("word/document.xml is missing"), "{missing}");
        let bad_xml = zip_of(&[(DOCUMENT_XML, b"<w:document><w:body><w:p></w:body>")]);
        let message = error_of(parse(FileKind::Docx, &bad_xml, RecordSchema::FreeText, &limits()));
        assert!(message.contains("docx: bad XML in word/document.xml at byte"), "{message}");
        let empty = error_of(parse(FileKind::Docx, &docx("<w:p/>"), RecordSchema::FreeText, &limits()));
        assert_eq!(empty, "docx: the file has no text");
    }

    #[test]
    fn a_docx_zip_bomb_is_refused() {
        let limits = ParseLimits { max_decompressed_bytes: 1 << 20, ..limits() };
        let spaces = vec![b' '; 100 << 20];
        let bomb = docx(std::str::from_utf8(&spaces).expect("ascii"));
        assert!(bomb.len() < 1 << 20, "the bomb is small: {} bytes", bomb.len());
        let message = error_of(parse(FileKind::Docx, &bomb, RecordSchema::FreeText, &limits));
        assert_eq!(message, "docx: decompressed size exceeds 1 MiB: split the file into smaller uploads");

        // A bomb that understates its size gets past the declared-size check; the zip reader
        // refuses to inflate past a declared size, and `take` would stop it if it did not.
        let lying = understate_sizes(bomb);
        let message = error_of(parse(FileKind::Docx, &lying, RecordSchema::FreeText, &limits));
        assert!(message.starts_with("docx: "), "{message}");
        assert!(message.contains("decompressed size exceeds 1 MiB") || message.contains("cannot inflate"), "{message}");
    }

    /// Rewrites the declared uncompressed size of every entry (local and central headers) to 1000.
    fn understate_sizes(mut zip: Vec<u8>) -> Vec<u8> {
        for index in 0..zip.len().saturating_sub(30) {
            let offset = match &zip[index..index + 4] {
                b"PK\x03\x04" => 22,
                b"PK\x01\x02" => 24,
                _ => continue,
            };
            zip[index + offset..index + offset + 4].copy_from_slice(&1000u32.to_le_bytes());
        }
        zip
    }

    // ---- pdf

    #[test]
    fn pdf_text_layer_is_read_page_by_page() {
        for compress in [false, true] {
            let bytes =
                pdf(&[&["Introduction to soil science.", "Soil holds water."], &["Second page text."]], compress);
            let records = parse(FileKind::Pdf, &bytes, RecordSchema::FreeText, &limits()).expect("parses");
            assert_eq!(texts(&records), ["Introduction to soil science.\nSoil holds water.\n\nSecond page text."]);
            assert_eq!(records[0].source, "page 1");
        }
        let limits = ParseLimits { chunk_target_chars: 10, ..limits() };
        let records =
            parse(FileKind::Pdf, &pdf(&[&["Page one."], &["Page two."]], true), RecordSchema::FreeText, &limits)
                .expect("parses");
        assert_eq!(records.iter().map(|record| record.source.as_str()).collect::<Vec<_>>(), ["page 1", "page 2"]);
    }

    #[test]
    fn pdf_words_and_lines_follow_the_text_operators() {
        let page = vec![
            Operation::new(
                "TJ",
                vec![
                    vec![
                        Object::string_literal("Hel"),
                        (-20).into(),
                        Object::string_literal("lo"),
                        (-250).into(),
                        Object::string_literal("world"),
                    ]
                    .into(),
                ],
            ),
            Operation::new("Td", vec![200.into(), 0.into()]),
            Operation::new("Tj", vec![Object::string_literal(",")]),
            Operation::new("Td", vec![0.into(), (-14).into()]),
            Operation::new("Tj", vec![Object::string_literal("next line")]),
            Operation::new("'", vec![Object::string_literal("and another")]),
            Operation::new("\"", vec![1.into(), 1.into(), Object::string_literal("and the last.")]),
        ];
        let records =
            parse(FileKind::Pdf, &pdf_of(vec![page], false), RecordSchema::FreeText, &limits()).expect("parses");
        assert_eq!(texts(&records), ["Hello world,\nnext line\nand another\nand the last."]);
    }

    #[test]
    fn broken_pdfs_are_errors() {
        let message = error_of(parse(FileKind::Pdf, b"hello, not a pdf", RecordSchema::FreeText, &limits()));
        assert_eq!(message, "pdf: not a PDF (no %PDF- header)");
        let message = error_of(parse(FileKind::Pdf, b"%PDF-1.7\ngarbage", RecordSchema::FreeText, &limits()));
        assert!(message.starts_with("pdf: cannot read the file"), "{message}");
        let message = error_of(parse(FileKind::Pdf, &pdf(&[&[]], true), RecordSchema::FreeText, &limits()));
        assert!(message.contains("pdf: no text layer (scanned image?)"), "{message}");
    }

    #[test]
    fn a_pdf_stream_bomb_is_refused() {
        let limits = ParseLimits { max_decompressed_bytes: 1 << 20, ..limits() };
        let line = "Lorem ipsum dolor sit amet. ".repeat(1_000);
        let page = [line.as_str()];
        let pages = vec![&page[..]; 60];
        let bytes = pdf(&pages, true);
        assert!(bytes.len() < 1 << 20, "the bomb is small: {} bytes", bytes.len());
        let message = error_of(parse(FileKind::Pdf, &bytes, RecordSchema::FreeText, &limits));
        assert_eq!(message, "pdf: decompressed size exceeds 1 MiB: split the file into smaller uploads");
    }

    // ---- fuzz targets

    fn sample(kind: FileKind) -> Vec<u8> {
        match kind {
            FileKind::Text => b"First paragraph.\n\nSecond paragraph. With two sentences.\n".to_vec(),
            FileKind::Markdown => b"# Title\n\nBody text.\n\n## Part\n\n- item\n".to_vec(),
            FileKind::Jsonl => {
                b"{\"text\":\"hello\",\"label\":\"a\",\"instruction\":\"x\",\"response\":\"y\"}\n".to_vec()
            }
            FileKind::Csv => b"text,label,instruction,response\nhello,a,x,y\n\"quoted, text\",b,x,y\n".to_vec(),
            FileKind::Pdf => pdf(&[&["Some text on a page."], &["More."]], true),
            FileKind::Docx => {
                docx(&[paragraph(Some("Heading1"), "<w:t>Title</w:t>"), paragraph(None, "<w:t>Body</w:t>")].concat())
            }
        }
    }

    const KINDS: [FileKind; 6] =
        [FileKind::Text, FileKind::Markdown, FileKind::Jsonl, FileKind::Csv, FileKind::Pdf, FileKind::Docx];
    const SCHEMAS: [RecordSchema; 3] =
        [RecordSchema::FreeText, RecordSchema::InstructionResponse, RecordSchema::LabelledText];

    fn fuzz_limits() -> ParseLimits {
        ParseLimits {
            max_records: 50,
            max_record_chars: 400,
            chunk_target_chars: 100,
            max_decompressed_bytes: 256 << 10,
        }
    }

    /// Parses without panicking; what it returns keeps within the limits.
    fn check_within_limits(kind: FileKind, bytes: &[u8], schema: RecordSchema) {
        let limits = fuzz_limits();
        if let Ok(records) = parse(kind, bytes, schema, &limits) {
            assert!(!records.is_empty() && records.len() <= limits.max_records);
            for record in records {
                let chars = [Some(&record.text), record.response.as_ref(), record.label.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(|field| field.chars().count())
                    .sum::<usize>();
                assert!(chars <= limits.max_record_chars, "{chars} chars in {record:?}");
                assert_eq!(normalize(&record.text), record.text);
            }
        }
    }

    fn mutate(mut bytes: Vec<u8>, flips: &[(prop::sample::Index, u8)], keep: prop::sample::Index) -> Vec<u8> {
        for (index, byte) in flips {
            let at = index.index(bytes.len());
            bytes[at] = *byte;
        }
        bytes.truncate(keep.index(bytes.len() + 1));
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn arbitrary_bytes_never_panic(
            kind in prop::sample::select(KINDS.as_slice()),
            schema in prop::sample::select(SCHEMAS.as_slice()),
            bytes in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            check_within_limits(kind, &bytes, schema);
            let mut with_header = b"%PDF-1.4\n".to_vec();
            with_header.extend_from_slice(&bytes);
            check_within_limits(FileKind::Pdf, &with_header, RecordSchema::FreeText);
        }

        #[test]
        fn arbitrary_text_never_panics(kind in prop::sample::select(KINDS.as_slice()), text in "\\PC{0,300}") {
            for schema in SCHEMAS {
                check_within_limits(kind, text.as_bytes(), schema);
            }
        }

        #[test]
        fn mutated_samples_never_panic(
            kind in prop::sample::select(KINDS.as_slice()),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            keep in any::<prop::sample::Index>(),
        ) {
            let bytes = mutate(sample(kind), &flips, keep);
            for schema in SCHEMAS {
                check_within_limits(kind, &bytes, schema);
            }
        }

        #[test]
        fn normalize_is_idempotent(text in "\\PC{0,200}|[ \\t\\r\\n\\u{0}-\\u{1f}a-c\\u{301}\\u{a0}\\u{2028}]{0,60}") {
            let once = normalize(&text);
            prop_assert_eq!(normalize(&once), once.clone());
            prop_assert!(!once.contains("\n\n\n") && !once.contains("  ") && !once.contains('\t'));
        }

        #[test]
        fn prose_records_never_exceed_the_record_limit(
            words in prop::collection::vec("[a-z]{1,30}|[.!?]|\n|\n\n|# |x{50,120}", 0..300),
        ) {
            let text = words.join(" ");
            check_within_limits(FileKind::Markdown, text.as_bytes(), RecordSchema::FreeText);
        }
    }
}
