//! Turning a file's bytes into text and the text into YAML documents, before any parsing.
//!
//! Documents are split on `---` / `...` lines (as kubectl does) so each one is checked and
//! parsed on its own: a too-deep or broken document is skipped and the next one still loads.

/// One YAML document of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Document<'a> {
    /// 1-based, counted like the YAML parser counts documents.
    pub number: usize,
    /// 1-based line of the file where `text` starts.
    pub first_line: usize,
    pub text: &'a str,
}

/// Decodes a manifest file: UTF-8 (with or without a byte-order mark), or UTF-16 with a
/// byte-order mark (what Windows PowerShell's `>` writes), like kubectl accepts.
pub(crate) fn decode(bytes: &[u8]) -> Result<std::borrow::Cow<'_, str>, String> {
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => utf8(rest).map(Into::into),
        [0xFF, 0xFE, rest @ ..] => utf16(rest, u16::from_le_bytes).map(Into::into),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, u16::from_be_bytes).map(Into::into),
        _ => utf8(bytes).map(Into::into),
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|err| {
        let at = err.valid_up_to();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        format!(
            "invalid byte 0x{:02x} at offset {at} (line {line})",
            bytes[at]
        )
    })
}

fn utf16(bytes: &[u8], unit: fn([u8; 2]) -> u16) -> Result<String, String> {
    if !bytes.len().is_multiple_of(2) {
        return Err("UTF-16 text with an odd number of bytes".to_owned());
    }
    let units = bytes.chunks_exact(2).map(|pair| unit([pair[0], pair[1]]));
    char::decode_utf16(units)
        .collect::<Result<String, _>>()
        .map_err(|err| format!("invalid UTF-16: {err}"))
}

/// Splits `text` into documents. A section holding only comments, blank lines and directives
/// before a `---` is not a document of its own (it belongs to the next one); an explicit
/// empty document (`---` followed by nothing) is.
pub(crate) fn split(text: &str) -> Vec<Document<'_>> {
    let mut sections = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut explicit = false;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        let bare = line.trim_end_matches(['\n', '\r']);
        if is_marker(bare, "---") {
            sections.push((start, offset, start_line, explicit));
            (start, start_line, explicit) = (offset, line_no, true);
        } else if is_marker(bare, "...") {
            sections.push((start, offset + line.len(), start_line, explicit));
            (start, start_line, explicit) = (offset + line.len(), line_no + 1, false);
        }
        offset += line.len();
    }
    sections.push((start, text.len(), start_line, explicit));

    let mut documents = Vec::new();
    let mut carried: Option<(usize, usize)> = None; // an ignorable section's start
    for (start, end, first_line, explicit) in sections {
        let (start, first_line) = carried.take().unwrap_or((start, first_line));
        if !explicit && is_ignorable(&text[start..end]) {
            carried = Some((start, first_line));
            continue;
        }
        documents.push(Document {
            number: documents.len() + 1,
            first_line,
            text: &text[start..end],
        });
    }
    documents
}

/// `---` or `...` at the start of a line, followed by nothing or by a blank.
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

fn is_ignorable(section: &str) -> bool {
    section.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line.starts_with('%')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<(usize, usize, &str)> {
        split(text)
            .into_iter()
            .map(|d| (d.number, d.first_line, d.text))
            .collect()
    }

    #[test]
    fn splits_like_the_yaml_parser_counts() {
        assert_eq!(texts(""), []);
        assert_eq!(texts("a: 1\n"), [(1, 1, "a: 1\n")]);
        assert_eq!(
            texts("# intro\n---\na: 1\n---\nb: 2\n---\n"),
            [
                (1, 1, "# intro\n---\na: 1\n"),
                (2, 4, "---\nb: 2\n"),
                (3, 6, "---\n")
            ]
        );
        assert_eq!(
            texts("a: 1\n...\n# c\n--- # x\nb: 2\n"),
            [(1, 1, "a: 1\n...\n"), (2, 3, "# c\n--- # x\nb: 2\n")]
        );
        assert_eq!(texts("a: 1\r\n---\r\nb\r\n")[1], (2, 2, "---\r\nb\r\n"));
        // `----` and `---x` are text, not markers.
        assert_eq!(texts("a: |\n ---x\n----\n").len(), 1);
    }

    #[test]
    fn decodes_utf8_and_utf16_with_byte_order_marks() {
        assert_eq!(decode(b"\xEF\xBB\xBFa: 1").unwrap(), "a: 1");
        let le: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("a: é".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(decode(&le).unwrap(), "a: é");
        let be: Vec<u8> = [0xFE, 0xFF]
            .into_iter()
            .chain("a: 1".encode_utf16().flat_map(u16::to_be_bytes))
            .collect();
        assert_eq!(decode(&be).unwrap(), "a: 1");
        let err = decode(b"a: 1\nb: \xFF\xFE\x00").unwrap_err();
        assert_eq!(err, "invalid byte 0xff at offset 8 (line 2)");
    }
}
