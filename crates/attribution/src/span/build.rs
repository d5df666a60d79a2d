//! Building an index: tokenize the records in corpus order, cut them into shards of whole
//! records, sort each shard's suffixes with libsais and write the files into a temporary
//! directory that is renamed into place only once everything is written and synced.

use std::path::{Path, PathBuf};

use libsais::SuffixArrayConstruction;
use openledger_ml::Tokenizer;

use super::format::{HEADER_FILE, INDEX_FORMAT, RECORDS_FILE, SpanIndexHeader, SpanShardHeader, write_file};
use super::{MAX_SHARD_TOKENS, SEPARATOR_TOKEN, SpanIndex};
use crate::corpus::Corpus;
use crate::{AttributionError, Result};

impl SpanIndex {
    /// Tokenizes `corpus` and writes its index into `dir`, which must not exist yet: the files
    /// are written into a sibling temporary directory renamed to `dir` at the end, so `dir`
    /// appears only whole. A shard holds whole records, at most `shard_tokens` tokens unless one
    /// record alone is longer. `on_progress(records done, records total)`.
    pub fn build(
        corpus: &Corpus,
        tokenizer: &Tokenizer,
        dir: &Path,
        shard_tokens: usize,
        on_progress: &mut dyn FnMut(u64, u64),
    ) -> Result<SpanIndexHeader> {
        check_build(tokenizer, dir, shard_tokens)?;
        let staging = staging_dir(dir)?;
        std::fs::create_dir_all(&staging).map_err(|e| AttributionError::io(&staging, e))?;
        let built = write_index(corpus, tokenizer, &staging, shard_tokens, on_progress)
            .and_then(|header| publish(&staging, dir).map(|()| header));
        if built.is_err() {
            // Best effort: the index directory itself was never created, which is what matters.
            let _ = std::fs::remove_dir_all(&staging);
        }
        built
    }
}

fn check_build(tokenizer: &Tokenizer, dir: &Path, shard_tokens: usize) -> Result<()> {
    if !(1..=MAX_SHARD_TOKENS).contains(&shard_tokens) {
        return Err(AttributionError::invalid(format!("shard_tokens must be between 1 and {MAX_SHARD_TOKENS}")));
    }
    if tokenizer.vocab_size() > usize::from(SEPARATOR_TOKEN) {
        return Err(AttributionError::invalid(format!(
            "the tokenizer has {} ids; the span index stores tokens as u16 and takes at most {}",
            tokenizer.vocab_size(),
            SEPARATOR_TOKEN
        )));
    }
    if dir.exists() {
        return Err(AttributionError::invalid(format!(
            "{} already exists: remove it or build the index into another directory",
            dir.display()
        )));
    }
    Ok(())
}

/// A sibling of `dir` (same file system, so the rename is atomic), unique to this build.
fn staging_dir(dir: &Path) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| AttributionError::invalid(format!("{} does not name a directory", dir.display())))?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let staging = format!(".{}.building-{}-{nanos}", name.to_string_lossy(), std::process::id());
    Ok(dir.with_file_name(staging))
}

fn publish(staging: &Path, dir: &Path) -> Result<()> {
    std::fs::rename(staging, dir).map_err(|e| AttributionError::io(dir, e))?;
    // The rename is durable once the parent directory is synced.
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent).and_then(|f| f.sync_all()).map_err(|e| AttributionError::io(parent, e))?;
    }
    Ok(())
}

fn write_index(
    corpus: &Corpus,
    tokenizer: &Tokenizer,
    staging: &Path,
    shard_tokens: usize,
    on_progress: &mut dyn FnMut(u64, u64),
) -> Result<SpanIndexHeader> {
    let total = corpus.records.len() as u64;
    let mut shards = Vec::new();
    let mut pending = PendingShard::default();
    let mut tokens = 0u64;
    for (index, record) in corpus.records.iter().enumerate() {
        // A record is tokenized as if it followed a space, as a quote of its first words does
        // in running text: byte-level BPE (SmolLM2, GPT-2) spells a word after a space with
        // other tokens than at the start of a text, so an index of bare records would miss
        // quotes of their first words.
        let ids = tokenizer.encode_continuation(&format!(" {}", record.text))?;
        if !pending.is_empty() && pending.text.len() + ids.len() + 1 > shard_tokens {
            shards.push(pending.write(staging, shards.len())?);
            pending = PendingShard { first_record: index, ..PendingShard::default() };
        }
        tokens += ids.len() as u64;
        pending.push(&ids);
        on_progress(index as u64 + 1, total);
    }
    shards.push(pending.write(staging, shards.len())?);
    let hashes: Vec<u8> = corpus.records.iter().flat_map(|r| *r.hash.as_bytes()).collect();
    let header = SpanIndexHeader {
        format: INDEX_FORMAT.to_string(),
        tokenizer: tokenizer.fingerprint()?,
        corpus: corpus.name.clone(),
        records: total,
        tokens,
        records_file: write_file(staging, RECORDS_FILE, &hashes)?,
        shards,
    };
    let json = serde_json::to_vec_pretty(&header).map_err(|e| AttributionError::invalid(e.to_string()))?;
    write_file(staging, HEADER_FILE, &json)?;
    Ok(header)
}

/// The records of the shard being filled.
#[derive(Default)]
struct PendingShard {
    first_record: usize,
    text: Vec<u16>,
    record_starts: Vec<u64>,
}

impl PendingShard {
    fn is_empty(&self) -> bool {
        self.record_starts.is_empty()
    }

    /// Appends a record; ids were checked against the vocabulary size, so none is the separator.
    fn push(&mut self, ids: &[u32]) {
        self.record_starts.push(self.text.len() as u64);
        self.text.extend(ids.iter().map(|&id| u16::try_from(id).unwrap_or(SEPARATOR_TOKEN - 1)));
        self.text.push(SEPARATOR_TOKEN);
    }

    fn write(&self, dir: &Path, number: usize) -> Result<SpanShardHeader> {
        if self.text.len() > MAX_SHARD_TOKENS {
            return Err(AttributionError::invalid(format!(
                "record {} alone is {} tokens; a shard holds at most {MAX_SHARD_TOKENS}",
                self.first_record,
                self.text.len()
            )));
        }
        let suffixes = SuffixArrayConstruction::for_text(&self.text)
            .in_owned_buffer32()
            .single_threaded()
            .run()
            .map_err(|e| AttributionError::invalid(format!("suffix array construction failed: {e:?}")))?
            .into_vec();
        let separators = self.record_starts.len();
        let real = self.text.len() - separators;
        let pointer_bytes = pointer_bytes(self.text.len());
        // The separator is the largest token, so the suffixes that start with one sort last.
        let mut packed = Vec::with_capacity(real * pointer_bytes);
        for &position in &suffixes[..real] {
            debug_assert_ne!(self.text[position as usize], SEPARATOR_TOKEN);
            packed.extend_from_slice(&(position as u64).to_le_bytes()[..pointer_bytes]);
        }
        let text: Vec<u8> = self.text.iter().flat_map(|t| t.to_le_bytes()).collect();
        let starts: Vec<u8> = self.record_starts.iter().flat_map(|s| s.to_le_bytes()).collect();
        let stem = format!("shard-{number:05}");
        Ok(SpanShardHeader {
            first_record: self.first_record as u64,
            records: separators as u64,
            tokens: real as u64,
            pointer_bytes: pointer_bytes as u8,
            tokens_file: write_file(dir, &format!("{stem}.tokens"), &text)?,
            suffixes_file: write_file(dir, &format!("{stem}.suffixes"), &packed)?,
            starts_file: write_file(dir, &format!("{stem}.starts"), &starts)?,
        })
    }
}

/// The fewest bytes that hold every position of a text of `len` tokens.
fn pointer_bytes(len: usize) -> usize {
    let bits = usize::BITS - len.saturating_sub(1).leading_zeros();
    (bits as usize).div_ceil(8).max(1)
}
