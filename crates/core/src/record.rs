//! The canonical bytes of a Datanet record: compact JSON with the schema's keys in a fixed
//! order and only the present fields, e.g. `{"instruction":"…","response":"…"}`. A record's
//! content hash is BLAKE3 of these bytes, whoever computes it (datanet-ingest when storing,
//! the trainer when recording which records shaped an adapter), so the escaping is written
//! out here rather than left to a serializer's version.

use crate::ContentHash;

/// Canonical JSON of `fields`, in the given order.
pub fn canonical_json(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>() + 2);
    out.push(b'{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_string(&mut out, key);
        out.push(b':');
        push_json_string(&mut out, value);
    }
    out.push(b'}');
    out
}

/// The content hash of a record with these fields.
pub fn record_hash(fields: &[(&str, &str)]) -> ContentHash {
    ContentHash::of(&canonical_json(fields))
}

fn push_json_string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    for c in value.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            c if u32::from(c) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", u32::from(c)).as_bytes()),
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_serde_json_for_awkward_strings() {
        for value in ["plain", "quote \" and \\ backslash", "tab\tnew\nline\r", "\u{1}\u{8}\u{c}", "ünï ☃"] {
            let ours = String::from_utf8(canonical_json(&[("text", value), ("label", "x")])).expect("utf8");
            let theirs = format!("{{\"text\":{},\"label\":\"x\"}}", serde_json::to_string(value).expect("json"));
            assert_eq!(ours, theirs);
        }
        assert_eq!(canonical_json(&[]), b"{}");
    }
}
