//! docx: the paragraphs of `word/document.xml` inside the zip, headings marked by their
//! paragraph style, with the inflated XML bounded by `max_decompressed_bytes`.

use std::io::{Cursor, Read};

use quick_xml::events::{BytesStart, Event};

use super::prose::Block;
use super::{FileKind, ParseError, ParseLimits, corrupt, normalize};

pub(super) const DOCUMENT_XML: &str = "word/document.xml";

pub(super) fn docx_blocks(bytes: &[u8], limits: &ParseLimits) -> Result<Vec<Block>, ParseError> {
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
