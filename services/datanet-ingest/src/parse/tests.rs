//! Tests of the parsers, and their fuzz targets (the proptest cases at the end).

use std::io::{Cursor, Write};

use lopdf::content::{Content, Operation};
use lopdf::{Document, Object, Stream, dictionary};
use proptest::prelude::*;
use zip::write::SimpleFileOptions;

use super::docx::DOCUMENT_XML;
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
    let properties = style.map(|style| format!(r#"<w:pPr><w:pStyle w:val="{style}"/></w:pPr>"#)).unwrap_or_default();
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
    let font_id = document.add_object(dictionary! { "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Courier" });
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
    let records = parse(FileKind::Text, long_paragraph.as_bytes(), RecordSchema::FreeText, &limits).expect("parses");
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
    let records = parse(FileKind::Text, b"\xEF\xBB\xBFbom stripped", RecordSchema::FreeText, &limits()).expect("ok");
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
    assert_eq!(records.iter().map(|record| record.label.as_deref()).collect::<Vec<_>>(), [Some("positive"), Some("5")]);
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
        ("{\"text\":\" \\u0000\\t \"}", RecordSchema::FreeText, "line 1: field \"text\" is empty after normalization"),
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
        ("text,id\nfine,1\n\" \",2\n", RecordSchema::FreeText, "row 3: field \"text\" is empty after normalization"),
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
    assert_eq!(texts(&records), ["Results\n\nYield rose 12% in 2023 & 2024!\n\nLine one\nline two", "Method\n\nPlots"]);
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
        let bytes = pdf(&[&["Introduction to soil science.", "Soil holds water."], &["Second page text."]], compress);
        let records = parse(FileKind::Pdf, &bytes, RecordSchema::FreeText, &limits()).expect("parses");
        assert_eq!(texts(&records), ["Introduction to soil science.\nSoil holds water.\n\nSecond page text."]);
        assert_eq!(records[0].source, "page 1");
    }
    let limits = ParseLimits { chunk_target_chars: 10, ..limits() };
    let records = parse(FileKind::Pdf, &pdf(&[&["Page one."], &["Page two."]], true), RecordSchema::FreeText, &limits)
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
    let records = parse(FileKind::Pdf, &pdf_of(vec![page], false), RecordSchema::FreeText, &limits()).expect("parses");
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
        FileKind::Jsonl => b"{\"text\":\"hello\",\"label\":\"a\",\"instruction\":\"x\",\"response\":\"y\"}\n".to_vec(),
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
    ParseLimits { max_records: 50, max_record_chars: 400, chunk_target_chars: 100, max_decompressed_bytes: 256 << 10 }
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
