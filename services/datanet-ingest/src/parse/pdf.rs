//! pdf: the text layer, page by page.
//!
//! The reader is `lopdf`: it is maintained, pure Rust, bounds every stream it inflates
//! (`LoadOptions::max_decompressed_size`) and limits object nesting. `pdf-extract` lays text out
//! better (it places words by position) but pins lopdf 0.42, from before those bounds, and its
//! 0.12 source holds some 70 `unwrap`/`expect` and 30 `panic!` on the way from a damaged file to
//! its text. lopdf may still panic on a damaged file, so it runs under `catch_unwind`. The bytes
//! inflated for page contents and font maps are counted against one budget for the whole file,
//! because a stream shared by many pages would otherwise be inflated once per page, and the text
//! operators are read here (`page_text`) in one pass over the pages. Text inside form XObjects
//! is not extracted.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use lopdf::content::Content;
use lopdf::{DecompressError, Document, Encoding, LoadOptions, Object, ObjectId};

use super::prose::{Block, pack, text_blocks};
use super::{FileKind, ParseError, ParseLimits, ParsedRecord, corrupt};

pub(super) fn pdf_records(bytes: &[u8], limits: &ParseLimits) -> Result<Vec<ParsedRecord>, ParseError> {
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
