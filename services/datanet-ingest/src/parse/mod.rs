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
//! size and the bytes inflated from a docx (zip) or pdf (streams); `pdf` says why its reader is
//! `lopdf` and how the inflated bytes are counted.
//!
//! This file holds the public types, kind detection, the [`parse`] entry point, [`normalize`] and
//! the helpers the readers share; `prose` packs paragraphs into chunks, `structured` reads jsonl
//! and csv, `docx` and `pdf` find the paragraphs of those files. The fuzz targets are the proptest
//! cases at the end of `tests`: for every kind, arbitrary bytes and mutations (byte flips,
//! truncations) of a valid sample must return `Ok` or `Err` within the limits, never panic.

mod docx;
mod pdf;
mod prose;
mod structured;
#[cfg(test)]
mod tests;

use std::fmt;

use unicode_normalization::UnicodeNormalization;

use self::docx::docx_blocks;
use self::pdf::pdf_records;
use self::prose::{pack, text_blocks};
use self::structured::{parse_csv, parse_jsonl};

/// What one record of a datanet holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordSchema {
    FreeText,
    InstructionResponse,
    LabelledText,
}

impl RecordSchema {
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

fn push_record(records: &mut Vec<ParsedRecord>, record: ParsedRecord, limits: &ParseLimits) -> Result<(), ParseError> {
    if records.len() >= limits.max_records {
        return Err(ParseError::TooManyRecords { max: limits.max_records });
    }
    records.push(record);
    Ok(())
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
