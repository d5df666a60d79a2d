//! Training records from JSONL, tokenized into examples with the positions the loss scores,
//! and packed into padded micro-batches under a token budget.
//!
//! One JSON object per line, all lines of one kind:
//! - free text `{"text": …}`: every token is scored;
//! - instruction `{"instruction"|"prompt"|"question": …, "response"|"completion"|"answer"|"output": …}`;
//! - chat `{"messages": [{"role": …, "content": …}, …]}` ending with an assistant message;
//! - labelled text `{"text": …, "label": …}`: the label is the completion.
//!
//! Only the response (the last assistant message, the label) is scored for the last three, with
//! the model's end-of-turn token after it. Records are named by the Datanet content hash of
//! their canonical JSON (`openledger_core::record`), so lineage points at Datanet records.

use std::collections::BTreeSet;
use std::path::Path;

use openledger_core::ContentHash;
use openledger_core::record::record_hash;
use serde_json::Value;

use crate::error::{MlError, Result};
use crate::tokenizer::{ChatMessage, Tokenizer};

/// Largest dataset file read (bytes) and largest single record line.
pub const MAX_DATASET_BYTES: u64 = 4 << 30;
pub const MAX_RECORD_BYTES: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Text,
    Instruction,
    Chat,
    Labelled,
}

/// One parsed record: the prompt (none for free text) and the scored completion.
#[derive(Clone, Debug)]
pub struct Record {
    pub hash: ContentHash,
    pub prompt: Vec<ChatMessage>,
    pub completion: String,
    /// 1-based line in the file, for error messages.
    pub line: usize,
}

/// Reads a JSONL file of records of one kind.
pub fn read_records(path: &Path) -> Result<(RecordKind, Vec<Record>)> {
    let size = std::fs::metadata(path).map_err(|e| MlError::io(path, e))?.len();
    if size > MAX_DATASET_BYTES {
        return Err(MlError::InvalidRequest(format!(
            "{} is {size} bytes; the limit is {MAX_DATASET_BYTES}",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| MlError::io(path, e))?;
    parse_records(&text).map_err(|e| MlError::InvalidRequest(format!("{}: {e}", path.display())))
}

/// Parses JSONL text; blank lines are skipped.
pub fn parse_records(text: &str) -> std::result::Result<(RecordKind, Vec<Record>), String> {
    let mut kind = None;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > MAX_RECORD_BYTES {
            return Err(format!("line {line_no}: a record of {} bytes exceeds {MAX_RECORD_BYTES}", line.len()));
        }
        let value: Value = serde_json::from_str(line).map_err(|e| format!("line {line_no}: invalid JSON: {e}"))?;
        let (k, record) = parse_record(&value, line_no).map_err(|e| format!("line {line_no}: {e}"))?;
        match kind {
            None => kind = Some(k),
            Some(first) if first != k => {
                return Err(format!("line {line_no}: a {k:?} record in a file of {first:?} records"));
            }
            Some(_) => {}
        }
        records.push(record);
    }
    match kind {
        Some(kind) => Ok((kind, records)),
        None => Err("the dataset has no records".into()),
    }
}

fn parse_record(value: &Value, line: usize) -> std::result::Result<(RecordKind, Record), String> {
    let object = value.as_object().ok_or("a record must be a JSON object")?;
    let field = |names: &[&str]| -> std::result::Result<Option<String>, String> {
        for name in names {
            match object.get(*name) {
                Some(Value::String(s)) if s.trim().is_empty() => return Err(format!("\"{name}\" is empty")),
                Some(Value::String(s)) => return Ok(Some(s.clone())),
                Some(_) => return Err(format!("\"{name}\" must be a string")),
                None => {}
            }
        }
        Ok(None)
    };
    let user = |text: &str| vec![ChatMessage::new("user", text)];
    if let Some(messages) = object.get("messages") {
        let messages: Vec<ChatMessage> = serde_json::from_value(messages.clone())
            .map_err(|e| format!("\"messages\" must be a list of {{role, content}}: {e}"))?;
        let Some((last, prompt)) = messages.split_last() else { return Err("\"messages\" is empty".into()) };
        if last.role != "assistant" || prompt.is_empty() {
            return Err("a chat record ends with an assistant message after at least one other".into());
        }
        if let Some(bad) = messages.iter().find(|m| !["system", "user", "assistant"].contains(&m.role.as_str())) {
            return Err(format!("unknown role {:?}", bad.role));
        }
        let canonical = serde_json::to_string(&messages).map_err(|e| e.to_string())?;
        let hash = record_hash(&[("messages", &canonical)]);
        return Ok((
            RecordKind::Chat,
            Record { hash, prompt: prompt.to_vec(), completion: last.content.clone(), line },
        ));
    }
    let instruction = field(&["instruction", "prompt", "question"])?;
    let response = field(&["response", "completion", "answer", "output"])?;
    let text = field(&["text"])?;
    let label = field(&["label"])?;
    match (text, label, instruction, response) {
        (Some(text), Some(label), None, None) => {
            let hash = record_hash(&[("text", &text), ("label", &label)]);
            Ok((RecordKind::Labelled, Record { hash, prompt: user(&text), completion: label, line }))
        }
        (Some(text), None, None, None) => {
            let hash = record_hash(&[("text", &text)]);
            Ok((RecordKind::Text, Record { hash, prompt: Vec::new(), completion: text, line }))
        }
        (None, None, Some(instruction), Some(response)) => {
            let hash = record_hash(&[("instruction", &instruction), ("response", &response)]);
            Ok((RecordKind::Instruction, Record { hash, prompt: user(&instruction), completion: response, line }))
        }
        (None, None, Some(_), None) => Err("an instruction without a response".into()),
        _ => Err("expected {\"text\"}, {\"text\",\"label\"}, {\"instruction\",\"response\"} or {\"messages\"}".into()),
    }
}

/// A tokenized record: `tokens[first_scored..]` are the scored tokens.
#[derive(Clone, Debug)]
pub struct Example {
    pub hash: ContentHash,
    pub tokens: Vec<u32>,
    pub first_scored: usize,
    /// For labelled records: the label, and the prompt's length (candidates are scored after it).
    pub label: Option<String>,
    pub truncated: bool,
}

impl Example {
    pub fn scored_tokens(&self) -> usize {
        self.tokens.len() - self.first_scored.max(1)
    }
}

/// Tokenized records with the label set (labelled data only).
pub struct Dataset {
    pub kind: RecordKind,
    pub examples: Vec<Example>,
    pub labels: Vec<String>,
    /// Each label's completion tokens (as `Tokenize::completion` makes them), for scoring.
    pub label_tokens: Vec<Vec<u32>>,
}

/// How records become token sequences.
pub struct Tokenize<'a> {
    pub tokenizer: &'a Tokenizer,
    /// Longest sequence kept. Longer free text keeps its first tokens; a longer prompt loses
    /// its beginning; a completion that alone does not fit is an error.
    pub max_tokens: usize,
}

impl Tokenize<'_> {
    /// The prompt's tokens: the model's chat format when it has one, else the text and a newline.
    pub fn prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        if self.tokenizer.chat_format().is_some() {
            self.tokenizer.encode_chat(messages)
        } else {
            let text: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
            self.tokenizer.encode(&format!("{}\n", text.join("\n")))
        }
    }

    /// The completion's tokens, ended by the end-of-turn token.
    pub fn completion(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode_continuation(text)?;
        ids.extend(self.tokenizer.end_of_turn());
        Ok(ids)
    }

    pub fn example(&self, record: &Record, kind: RecordKind) -> Result<Example> {
        let at = |e: String| MlError::InvalidRequest(format!("record on line {}: {e}", record.line));
        let label = (kind == RecordKind::Labelled).then(|| record.completion.clone());
        if kind == RecordKind::Text {
            let mut tokens = self.tokenizer.encode(&record.completion)?;
            tokens.extend(self.tokenizer.end_of_turn());
            let truncated = tokens.len() > self.max_tokens;
            tokens.truncate(self.max_tokens);
            if tokens.len() < 2 {
                return Err(at("the text is shorter than two tokens".into()));
            }
            return Ok(Example { hash: record.hash, tokens, first_scored: 1, label, truncated });
        }
        let mut prompt = self.prompt(&record.prompt)?;
        let completion = self.completion(&record.completion)?;
        if completion.len() >= self.max_tokens {
            return Err(at(format!(
                "the response is {} tokens; with its prompt it must fit {} tokens",
                completion.len(),
                self.max_tokens
            )));
        }
        let room = self.max_tokens - completion.len();
        let truncated = prompt.len() > room;
        if truncated {
            prompt.drain(..prompt.len() - room);
        }
        let first_scored = prompt.len();
        prompt.extend(completion);
        Ok(Example { hash: record.hash, tokens: prompt, first_scored, label, truncated })
    }

    /// Tokenizes every record. `labels`, when given, is the label set every label must be in;
    /// otherwise the set is the labels the records use.
    pub fn dataset(&self, kind: RecordKind, records: &[Record], labels: Option<&[String]>) -> Result<Dataset> {
        if records.is_empty() {
            return Err(MlError::InvalidRequest("the dataset has no records".into()));
        }
        let examples = records.iter().map(|r| self.example(r, kind)).collect::<Result<Vec<_>>>()?;
        let labels = match (kind, labels) {
            (RecordKind::Labelled, Some(set)) => {
                if let Some(bad) = records.iter().find(|r| !set.contains(&r.completion)) {
                    return Err(MlError::InvalidRequest(format!(
                        "record on line {}: label {:?} is not in the label set {set:?}",
                        bad.line, bad.completion
                    )));
                }
                set.to_vec()
            }
            (RecordKind::Labelled, None) => {
                records.iter().map(|r| r.completion.clone()).collect::<BTreeSet<_>>().into_iter().collect()
            }
            _ => Vec::new(),
        };
        let label_tokens = labels.iter().map(|label| self.completion(label)).collect::<Result<_>>()?;
        Ok(Dataset { kind, examples, labels, label_tokens })
    }
}

/// Packs examples, in `order`, into micro-batches whose padded size (examples × longest, with
/// `length(i)` example `i`'s tokens) stays within `batch_tokens`; an example longer than the
/// budget gets a batch of its own.
pub fn micro_batches(order: &[usize], length: impl Fn(usize) -> usize, batch_tokens: usize) -> Vec<Vec<usize>> {
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for &i in order {
        let len = length(i);
        let width = longest.max(len);
        if !current.is_empty() && (current.len() + 1) * width > batch_tokens {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(len);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_and_refuses_mixes() {
        let (kind, r) = parse_records("{\"text\":\"hello\"}\n\n{\"text\":\"world\"}\n").unwrap();
        assert_eq!((kind, r.len()), (RecordKind::Text, 2));
        assert_eq!(r[1].line, 3);
        let (kind, r) = parse_records(r#"{"prompt":"2+2?","completion":"4"}"#).unwrap();
        assert_eq!(kind, RecordKind::Instruction);
        // Named by the Datanet hash of {"instruction":…,"response":…} whatever the field names.
        assert_eq!(r[0].hash, record_hash(&[("instruction", "2+2?"), ("response", "4")]));
        let (kind, _) = parse_records(r#"{"text":"great","label":"pos"}"#).unwrap();
        assert_eq!(kind, RecordKind::Labelled);
        let chat = r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#;
        assert_eq!(parse_records(chat).unwrap().0, RecordKind::Chat);
        for (bad, expect) in [
            ("{\"text\":\"a\"}\n{\"text\":\"b\",\"label\":\"x\"}", "line 2: a Labelled record"),
            ("", "no records"),
            ("{\"text\":3}", "must be a string"),
            ("{\"text\":\"  \"}", "is empty"),
            ("[1]", "JSON object"),
            ("{\"instruction\":\"x\"}", "without a response"),
            ("{\"text\":", "line 1: invalid JSON"),
            (r#"{"messages":[{"role":"user","content":"hi"}]}"#, "ends with an assistant"),
        ] {
            let err = parse_records(bad).unwrap_err();
            assert!(err.contains(expect), "{bad}: {err}");
        }
    }

    #[test]
    fn batches_respect_the_padded_budget() {
        let ex = |n: usize| Example {
            hash: ContentHash::of(&[n as u8]),
            tokens: vec![1; n],
            first_scored: 1,
            label: None,
            truncated: false,
        };
        let examples = [ex(10), ex(10), ex(30), ex(5), ex(100)];
        let batches = micro_batches(&[0, 1, 2, 3, 4], |i| examples[i].tokens.len(), 64);
        assert_eq!(batches, vec![vec![0, 1], vec![2, 3], vec![4]]);
        for batch in &batches[..2] {
            let width = batch.iter().map(|&i| examples[i].tokens.len()).max().unwrap();
            assert!(batch.len() * width <= 64);
        }
    }
}
