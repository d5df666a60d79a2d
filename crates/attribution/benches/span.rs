//! Span index vs infini-gram, in one run: build speed and bytes per token of our index over a
//! real text corpus tokenized with SmolLM2's tokenizer, then query latency (p50/p99) of 64-token
//! completions, half quoting the corpus and half not: our `trace` (tokenization included) and
//! `count`, and, when its venv exists, infini-gram's `attribute` (the OLMoTrace query) and
//! `count` on the same token ids (bench/infini-gram/run.sh installs it and runs this bench).
//!
//! Corpus: Vim's help files (Debian package vim-runtime, /usr/share/vim/vim90/doc/*.txt), one
//! record per paragraph. Needs no network: without the model or the corpus it says so and stops.
//!
//! `cargo bench -p openledger-attribution --bench span -- [--max-bytes N] [--queries N]
//! [--shard-tokens N] [--out DIR]`

use std::path::{Path, PathBuf};
use std::time::Instant;

use openledger_attribution::corpus::{Corpus, CorpusRecord};
use openledger_attribution::span::{SpanIndex, SpanParams};
use openledger_core::ContentHash;
use openledger_ml::Tokenizer;
use openledger_ml::testing::smollm2_path;
use openledger_ml::train::data::RecordKind;
use rand::{Rng, SeedableRng, rngs::StdRng};

const CORPUS_DIR: &str = "/usr/share/vim/vim90/doc";
const QUERY_TOKENS: usize = 64;
const VENV_PYTHON: &str = "/var/tmp/openledger-tools/infini-gram-venv/bin/python";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let flag = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/openledger-tools/infini-gram-data"));
    let (max_bytes, queries, shard_tokens) =
        (flag("--max-bytes", 8 << 20), flag("--queries", 200), flag("--shard-tokens", 1 << 28));

    let Some(tokenizer) = smollm2_tokenizer() else {
        println!("span bench: skipped, no SmolLM2 at {} (scripts/fetch-models.sh smollm2)", smollm2_path().display());
        return;
    };
    let again = smollm2_tokenizer().expect("loaded once already");
    assert_eq!(
        tokenizer.fingerprint().expect("fingerprint"),
        again.fingerprint().expect("fingerprint"),
        "stable fingerprint"
    );
    let Some(corpus) = vim_help_corpus(max_bytes) else {
        println!("span bench: skipped, no corpus at {CORPUS_DIR} (apt-get install vim-runtime)");
        return;
    };
    let started = Instant::now();
    let record_ids: Vec<Vec<u32>> =
        corpus.records.iter().map(|r| tokenizer.encode_continuation(&r.text).expect("encode")).collect();
    let tokenize_s = started.elapsed().as_secs_f64();
    let dir = tempfile::tempdir().expect("tempdir");
    let index_dir = dir.path().join("index");
    let started = Instant::now();
    let header = SpanIndex::build(&corpus, &tokenizer, &index_dir, shard_tokens, &mut |_, _| {}).expect("build");
    let build_s = started.elapsed().as_secs_f64();
    let index = SpanIndex::open_for(&index_dir, &tokenizer).expect("open");
    let index_bytes: u64 = std::fs::read_dir(&index_dir)
        .expect("index dir")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum();
    println!(
        "corpus: vim help, {} records, {} tokens, {} shard(s); build {:.2} s = {:.0} tokens/s with tokenizing, \
         {:.0} tokens/s without (tokenizing alone {:.2} s); {:.2} bytes/token on disk",
        header.records,
        header.tokens,
        header.shards.len(),
        build_s,
        header.tokens as f64 / build_s,
        header.tokens as f64 / (build_s - tokenize_s).max(1e-9),
        tokenize_s,
        index_bytes as f64 / header.tokens as f64
    );

    let texts = query_texts(&corpus, &tokenizer, queries);
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tokenizer.encode_continuation(t).expect("encode")).collect();
    let params = SpanParams::default();
    let all_spans = SpanParams { max_spans_per_token: 1.0, ..SpanParams::default() };
    for text in &texts {
        index.trace(&tokenizer, text, &params).expect("warm up");
    }
    let mut spans_found = 0;
    let trace_ms = time_each(&texts, |text| {
        spans_found += index.trace(&tokenizer, text, &all_spans).expect("trace").len();
    });
    let trace_default_ms = time_each(&texts, |text| {
        index.trace(&tokenizer, text, &params).expect("trace");
    });
    let count_ms = time_each(&ids, |ids| {
        std::hint::black_box(index.count(ids));
    });
    println!();
    println!("| engine | query | p50 ms | p99 ms | spans ≥ 8 tokens found |");
    println!("|---|---|---|---|---|");
    println!(
        "| openledger span | trace, all maximal spans (incl. tokenizing) | {:.3} | {:.3} | {spans_found} |",
        pct(&trace_ms, 50),
        pct(&trace_ms, 99)
    );
    println!(
        "| openledger span | trace, default density 0.05 | {:.3} | {:.3} | |",
        pct(&trace_default_ms, 50),
        pct(&trace_default_ms, 99)
    );
    println!("| openledger span | count of the 64 ids | {:.3} | {:.3} | |", pct(&count_ms, 50), pct(&count_ms, 99));
    write_infini_gram_inputs(&out, &record_ids, &ids);
    run_infini_gram(&out);
}

fn smollm2_tokenizer() -> Option<Tokenizer> {
    let path = smollm2_path();
    let mut file = std::fs::File::open(&path).ok()?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).expect("SmolLM2 GGUF reads");
    Some(Tokenizer::from_gguf(&content.metadata).expect("SmolLM2 tokenizer"))
}

/// One record per paragraph of the help files, in file-name order, up to `max_bytes`.
fn vim_help_corpus(max_bytes: usize) -> Option<Corpus> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(CORPUS_DIR)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let mut records = Vec::new();
    let mut bytes = 0;
    for file in files {
        let text = std::fs::read(&file).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        for paragraph in text.split("\n\n").map(str::trim).filter(|p| p.len() >= 40) {
            if bytes + paragraph.len() > max_bytes {
                break;
            }
            bytes += paragraph.len();
            let position = records.len() as u64;
            records.push(CorpusRecord {
                position,
                hash: ContentHash::of(paragraph.as_bytes()),
                contribution: format!("c{position}"),
                contributor: format!("{:02x}", position % 251),
                text: paragraph.to_string(),
            });
        }
    }
    Corpus::new("vim-help", RecordKind::Text, records).ok()
}

/// `count` completions of 64 tokens: even ones quote a random record, odd ones are random
/// corpus words in random order.
fn query_texts(corpus: &Corpus, tokenizer: &Tokenizer, count: usize) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(42);
    let words: Vec<&str> = corpus.records.iter().flat_map(|r| r.text.split_whitespace()).collect();
    let mut texts = Vec::with_capacity(count);
    while texts.len() < count {
        let text = if texts.len() % 2 == 0 {
            let record = &corpus.records[rng.random_range(0..corpus.records.len())];
            let ids = tokenizer.encode_continuation(&record.text).expect("encode");
            if ids.len() < QUERY_TOKENS + 1 {
                continue;
            }
            let start = rng.random_range(0..ids.len() - QUERY_TOKENS);
            tokenizer.decode(&ids[start..start + QUERY_TOKENS]).expect("decode")
        } else {
            let picked: Vec<&str> = (0..QUERY_TOKENS).map(|_| words[rng.random_range(0..words.len())]).collect();
            let ids = tokenizer.encode_continuation(&picked.join(" ")).expect("encode");
            tokenizer.decode(&ids[..QUERY_TOKENS.min(ids.len())]).expect("decode")
        };
        texts.push(text);
    }
    texts
}

fn time_each<T>(items: &[T], mut run: impl FnMut(&T)) -> Vec<f64> {
    let mut ms: Vec<f64> = items
        .iter()
        .map(|item| {
            let started = Instant::now();
            run(item);
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms
}

fn pct(sorted: &[f64], p: usize) -> f64 {
    sorted[((sorted.len() - 1) * p).div_ceil(100).min(sorted.len() - 1)]
}

/// infini-gram's own layout (`tokenized.0`: `0xFFFF` then the u16 ids of each document;
/// `offset.0`: each document's byte offset as u64) and the query ids as JSON lines.
fn write_infini_gram_inputs(out: &Path, records: &[Vec<u32>], queries: &[Vec<u32>]) {
    let index = out.join("index");
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(&index).expect("infini-gram data dir");
    let (mut tokens, mut offsets) = (Vec::new(), Vec::new());
    for record in records {
        offsets.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
        tokens.extend_from_slice(&[0xFF, 0xFF]);
        for &id in record {
            tokens.extend_from_slice(&(id as u16).to_le_bytes());
        }
    }
    std::fs::write(index.join("tokenized.0"), tokens).expect("tokenized.0");
    std::fs::write(index.join("offset.0"), offsets).expect("offset.0");
    let lines: Vec<String> = queries.iter().map(|q| serde_json::to_string(q).expect("json")).collect();
    std::fs::write(out.join("queries.jsonl"), lines.join("\n")).expect("queries");
}

fn run_infini_gram(out: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/infini-gram/bench.py");
    if !Path::new(VENV_PYTHON).exists() {
        println!("| infini-gram | skipped: no venv at {VENV_PYTHON} (bench/infini-gram/run.sh creates it) | | | |");
        return;
    }
    let output = std::process::Command::new(VENV_PYTHON).arg(&script).arg(out).output().expect("run infini-gram");
    if !output.status.success() {
        println!(
            "| infini-gram | failed: {} | | | |",
            String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("")
        );
        return;
    }
    print!("{}", String::from_utf8_lossy(&output.stdout));
}
