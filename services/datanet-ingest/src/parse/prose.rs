//! Prose: paragraphs and headings (blocks) of txt and md files, and the packing of any prose
//! blocks (also docx paragraphs and pdf pages) into chunked free-text records, with paragraphs
//! longer than a record cut at sentence ends, else at whitespace.

use super::{ParseError, ParseLimits, ParsedRecord, lines, normalize, push_record};

/// A paragraph or heading of prose, normalized, with where it starts.
#[derive(Debug)]
pub(super) struct Block {
    pub(super) text: String,
    pub(super) source: String,
    pub(super) heading: bool,
}

/// Blocks of plain text or markdown: paragraphs split at blank lines; in markdown a heading line
/// (outside fenced code) is a block of its own. `locate` names a 1-based line number.
pub(super) fn text_blocks(text: &str, markdown: bool, locate: impl Fn(usize) -> String) -> Vec<Block> {
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
pub(super) fn pack(blocks: Vec<Block>, limits: &ParseLimits) -> Result<Vec<ParsedRecord>, ParseError> {
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
