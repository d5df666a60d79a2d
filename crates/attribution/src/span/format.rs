//! The span index on disk: `header.json` (format, tokenizer fingerprint, corpus, shard list and
//! every other file's length and BLAKE3 checksum), `records.bin` (the records' content hashes in
//! corpus order, 32 bytes each) and three files per shard: `.tokens` (`u16` little-endian),
//! `.suffixes` (positions, `pointer_bytes` each, little-endian) and `.starts` (each record's
//! first token, `u64` little-endian). Reading checks all of it before a query can see it.

use std::path::Path;

use openledger_core::ContentHash;
use serde::{Deserialize, Serialize};

use super::SEPARATOR_TOKEN;
use super::shard::Shard;
use crate::{AttributionError, Result};

/// The format string of `header.json`; bumped on any change to the files' layout.
pub const INDEX_FORMAT: &str = "openledger-span-index/2";
pub(super) const HEADER_FILE: &str = "header.json";
pub(super) const RECORDS_FILE: &str = "records.bin";

/// What an index was built from and of which files it consists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanIndexHeader {
    pub format: String,
    /// [`openledger_ml::Tokenizer::fingerprint`] of the tokenizer the records were encoded with.
    pub tokenizer: String,
    /// [`crate::corpus::Corpus::name`].
    pub corpus: String,
    pub records: u64,
    /// Tokens of all records, separators not counted.
    pub tokens: u64,
    pub records_file: FileEntry,
    pub shards: Vec<SpanShardHeader>,
}

/// One shard: a run of whole records in corpus order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanShardHeader {
    pub first_record: u64,
    pub records: u64,
    /// Tokens of its records, separators not counted.
    pub tokens: u64,
    pub pointer_bytes: u8,
    pub tokens_file: FileEntry,
    pub suffixes_file: FileEntry,
    pub starts_file: FileEntry,
}

/// A file of the index, named relative to its directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    /// BLAKE3 of the contents, hex.
    pub blake3: String,
}

/// Writes `bytes` as `dir/name` (synced), returning its entry.
pub(super) fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<FileEntry> {
    use std::io::Write;
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).map_err(|e| AttributionError::io(&path, e))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| AttributionError::io(&path, e))?;
    Ok(FileEntry {
        name: name.to_string(),
        bytes: bytes.len() as u64,
        blake3: blake3::hash(bytes).to_hex().to_string(),
    })
}

/// Reads a file of the index and checks it against its entry.
fn read_file(dir: &Path, entry: &FileEntry) -> Result<Vec<u8>> {
    if entry.name.contains(['/', '\\']) || entry.name.starts_with('.') {
        return Err(corrupt(dir, HEADER_FILE, format!("file name {:?} is not a plain name", entry.name)));
    }
    let path = dir.join(&entry.name);
    let bytes = std::fs::read(&path).map_err(|e| AttributionError::io(&path, e))?;
    if bytes.len() as u64 != entry.bytes {
        return Err(corrupt(
            dir,
            &entry.name,
            format!("{} bytes, the header says {}: rebuild the index", bytes.len(), entry.bytes),
        ));
    }
    if blake3::hash(&bytes).to_hex().as_str() != entry.blake3 {
        return Err(corrupt(dir, &entry.name, "its BLAKE3 checksum differs from the header's: rebuild the index"));
    }
    Ok(bytes)
}

fn corrupt(dir: &Path, name: &str, detail: impl ToString) -> AttributionError {
    AttributionError::corrupt(format!("span index file {}", dir.join(name).display()), detail)
}

/// Reads and verifies a whole index.
pub(super) fn read_index(dir: &Path) -> Result<(SpanIndexHeader, Vec<ContentHash>, Vec<Shard>)> {
    let path = dir.join(HEADER_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| AttributionError::io(&path, e))?;
    let header: SpanIndexHeader = serde_json::from_str(&text).map_err(|e| corrupt(dir, HEADER_FILE, e))?;
    if header.format != INDEX_FORMAT {
        return Err(corrupt(dir, HEADER_FILE, format!("format {:?}, expected {INDEX_FORMAT:?}", header.format)));
    }
    let records = read_file(dir, &header.records_file)?;
    if records.len() as u64 != header.records * ContentHash::LEN as u64 {
        return Err(corrupt(
            dir,
            RECORDS_FILE,
            format!("holds {} bytes for {} records", records.len(), header.records),
        ));
    }
    let records: Vec<ContentHash> = records
        .chunks_exact(ContentHash::LEN)
        .map(|chunk| {
            let mut bytes = [0u8; 32];
            bytes.copy_from_slice(chunk);
            ContentHash::from_bytes(bytes)
        })
        .collect();
    let mut shards = Vec::with_capacity(header.shards.len());
    let mut next_record = 0u64;
    for entry in &header.shards {
        if entry.first_record != next_record {
            return Err(corrupt(
                dir,
                HEADER_FILE,
                format!("a shard starts at record {}, expected {next_record}", entry.first_record),
            ));
        }
        next_record += entry.records;
        shards.push(read_shard(dir, entry)?);
    }
    if next_record != header.records {
        return Err(corrupt(
            dir,
            HEADER_FILE,
            format!("the shards hold {next_record} records, the header says {}", header.records),
        ));
    }
    Ok((header, records, shards))
}

fn read_shard(dir: &Path, entry: &SpanShardHeader) -> Result<Shard> {
    let tokens: Vec<u16> = read_file(dir, &entry.tokens_file)?
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    let suffixes = read_file(dir, &entry.suffixes_file)?;
    let record_starts: Vec<u64> = read_file(dir, &entry.starts_file)?
        .chunks_exact(8)
        .map(|chunk| u64::from_le_bytes(chunk.try_into().unwrap_or_default()))
        .collect();
    let shard = Shard {
        tokens,
        suffixes,
        pointer_bytes: usize::from(entry.pointer_bytes),
        record_starts,
        first_record: usize::try_from(entry.first_record).unwrap_or(usize::MAX),
    };
    check_shard(&shard, entry).map_err(|detail| corrupt(dir, &entry.suffixes_file.name, detail))?;
    Ok(shard)
}

/// The invariants a query relies on, checked once here so the searches need not.
fn check_shard(shard: &Shard, entry: &SpanShardHeader) -> std::result::Result<(), String> {
    let text_len = shard.tokens.len();
    if !(1..=8).contains(&shard.pointer_bytes) || !shard.suffixes.len().is_multiple_of(shard.pointer_bytes) {
        return Err(format!("pointer width {} does not divide the suffix file", shard.pointer_bytes));
    }
    if shard.record_starts.len() as u64 != entry.records || shard.record_starts.first() != Some(&0) {
        return Err(format!("{} record starts for {} records", shard.record_starts.len(), entry.records));
    }
    let last_start = shard.record_starts.last().copied().unwrap_or(0);
    if shard.record_starts.windows(2).any(|pair| pair[0] >= pair[1]) || last_start >= text_len as u64 {
        return Err("record starts do not increase inside the text".into());
    }
    let separators = shard.tokens.iter().filter(|&&t| t == SEPARATOR_TOKEN).count();
    if separators as u64 != entry.records || shard.tokens.last() != Some(&SEPARATOR_TOKEN) {
        return Err(format!("{separators} record separators for {} records", entry.records));
    }
    if (text_len - separators) as u64 != entry.tokens || shard.len() != text_len - separators {
        return Err(format!("{} suffixes for {} tokens", shard.len(), entry.tokens));
    }
    if (0..shard.len()).any(|rank| shard.tokens.get(shard.suffix(rank)).is_none_or(|&t| t == SEPARATOR_TOKEN)) {
        return Err("a suffix points outside the text or at a separator".into());
    }
    Ok(())
}
