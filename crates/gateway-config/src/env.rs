//! `${ENV_VAR}` interpolation on the raw text, and the map from offsets in the
//! expanded text back to line and column in the file as written.
//!
//! Only the inside of quoted strings is expanded (values and quoted keys, basic and
//! literal, single- and multi-line); comments and bare tokens are left alone, so a
//! `${VAR}` in a comment is never looked up. A value substituted into a `"basic"`
//! string is escaped (backslash, quote, control characters), so an environment
//! variable can never change the structure of the document. A `'literal'` string
//! cannot escape anything: a value with a `'` or a control character is an error
//! there. `$${` is an escape for a literal `${`.

use std::ops::Range;

use crate::error::ConfigError;

/// The text after expansion and what is needed to report positions in the original.
#[derive(Debug, Clone)]
pub(crate) struct Expanded {
    pub(crate) text: String,
    pub(crate) map: SourceMap,
}

/// Maps byte offsets in the expanded text to the file as written.
#[derive(Debug, Clone)]
pub(crate) struct SourceMap {
    file: String,
    original: String,
    /// Replacements in increasing order.
    edits: Vec<Edit>,
}

#[derive(Debug, Clone)]
struct Edit {
    /// Bytes of the original text that were replaced.
    original: Range<usize>,
    /// Where the replacement starts in the expanded text.
    start: usize,
    /// Length of the replacement.
    len: usize,
}

impl SourceMap {
    /// The map of a text without substitutions.
    pub(crate) fn identity(file: &str, text: &str) -> Self {
        SourceMap { file: file.to_owned(), original: text.to_owned(), edits: Vec::new() }
    }

    /// The offset in the original text of `offset` in the expanded text. An offset
    /// inside a substituted value maps to its `${`.
    pub(crate) fn original_offset(&self, offset: usize) -> usize {
        let idx = self.edits.partition_point(|e| e.start <= offset);
        if idx == 0 {
            return offset;
        }
        let edit = &self.edits[idx - 1];
        if offset < edit.start + edit.len {
            edit.original.start
        } else {
            offset - (edit.start + edit.len) + edit.original.end
        }
    }

    /// An error at `offset` in the original text.
    pub(crate) fn error_at_original(&self, offset: usize, message: &str) -> ConfigError {
        let (line, col) = line_col(&self.original, offset);
        ConfigError { file: self.file.clone(), line, col, message: crate::error::one_line(message) }
    }

    /// An error at `offset` in the expanded text.
    pub(crate) fn error_at(&self, offset: usize, message: &str) -> ConfigError {
        self.error_at_original(self.original_offset(offset), message)
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    Comment,
    Basic,
    Literal,
    MultiBasic,
    MultiLiteral,
}

/// Expands every `${NAME}` inside strings of `text`. Errors (missing variables,
/// malformed references) are all collected, each at the position of its `${`.
pub(crate) fn expand(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Expanded, Vec<ConfigError>> {
    let mut map = SourceMap::identity(file, text);
    let mut errors = Vec::new();
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    // `copied` is how far `text` has been copied into `out`.
    let mut copied = 0;
    let mut state = State::Normal;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match (state, b) {
            (State::Normal, b'#') => state = State::Comment,
            (State::Normal, b'"' | b'\'') => {
                let triple = bytes[i..].starts_with(&[b, b, b]);
                state = match (b, triple) {
                    (b'"', true) => State::MultiBasic,
                    (b'"', false) => State::Basic,
                    (_, true) => State::MultiLiteral,
                    (_, false) => State::Literal,
                };
                i += if triple { 3 } else { 1 };
                continue;
            }
            (State::Normal, _) => {}
            (State::Comment, b'\n') => state = State::Normal,
            (State::Comment, _) => {}
            // An unterminated string: the toml parser reports it.
            (State::Basic | State::Literal, b'\n') => state = State::Normal,
            (State::Basic | State::MultiBasic, b'\\') => {
                i += 2;
                continue;
            }
            (State::Basic, b'"') | (State::Literal, b'\'') => state = State::Normal,
            (State::MultiBasic, b'"') | (State::MultiLiteral, b'\'') => {
                // A closing delimiter may follow up to two quotes of the content.
                let run = bytes[i..].iter().take_while(|&&c| c == b).count();
                i += run;
                if run >= 3 {
                    state = State::Normal;
                }
                continue;
            }
            (_, b'$') => {
                if bytes[i..].starts_with(b"$${") {
                    // `$${` is a literal `${`: drop the first `$`.
                    out.push_str(&text[copied..i]);
                    map.edits.push(Edit { original: i..i + 1, start: out.len(), len: 0 });
                    copied = i + 1;
                    i += 3;
                    continue;
                }
                if bytes[i..].starts_with(b"${") {
                    let name_len = variable_name_len(&bytes[i + 2..]);
                    let close = i + 2 + name_len;
                    if name_len == 0 || bytes.get(close) != Some(&b'}') {
                        errors.push(map.error_at_original(
                            i,
                            "`${` must be followed by a variable name and `}`, as in `${NAME}` \
                             (write `$${` for a literal `${`)",
                        ));
                        i += 2;
                        continue;
                    }
                    let name = &text[i + 2..close];
                    match env(name) {
                        None => {
                            errors.push(map.error_at_original(i, &format!("environment variable `{name}` is not set")))
                        }
                        Some(value) => match escape(&value, state) {
                            Ok(value) => {
                                out.push_str(&text[copied..i]);
                                map.edits.push(Edit { original: i..close + 1, start: out.len(), len: value.len() });
                                out.push_str(&value);
                                copied = close + 1;
                            }
                            Err(why) => {
                                errors.push(map.error_at_original(i, &format!("environment variable `{name}` {why}")))
                            }
                        },
                    }
                    i = close + 1;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    out.push_str(&text[copied.min(text.len())..]);
    Ok(Expanded { text: out, map })
}

fn variable_name_len(bytes: &[u8]) -> usize {
    match bytes.first() {
        Some(b) if b.is_ascii_alphabetic() || *b == b'_' => {
            bytes.iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count()
        }
        _ => 0,
    }
}

/// The value as it must be written inside a string of kind `state`.
fn escape(value: &str, state: State) -> Result<String, &'static str> {
    match state {
        State::Literal | State::MultiLiteral => {
            let multi = state == State::MultiLiteral;
            let bad = value
                .chars()
                .any(|c| c == '\'' || (c.is_control() && c != '\t' && !(multi && (c == '\n' || c == '\r'))));
            if bad {
                Err("contains a `'` or a control character, which a 'literal' string cannot hold; \
                     use a \"basic\" string")
            } else {
                Ok(value.to_owned())
            }
        }
        _ => {
            let mut out = String::with_capacity(value.len());
            for c in value.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '\u{8}' => out.push_str("\\b"),
                    '\u{c}' => out.push_str("\\f"),
                    c if (c as u32) < 0x20 || c == '\u{7f}' => {
                        out.push_str(&format!("\\u{:04X}", c as u32));
                    }
                    c => out.push(c),
                }
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("example.com".into()),
            "EMPTY" => Some(String::new()),
            "NASTY" => Some("a\"b\\c\nd\u{1}".into()),
            "QUOTE" => Some("it's".into()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<String, Vec<ConfigError>> {
        expand("f.toml", text, &env).map(|e| e.text)
    }

    #[test]
    fn expands_in_basic_and_literal_strings() {
        assert_eq!(run("a = \"http://${HOST}/\"").unwrap(), "a = \"http://example.com/\"");
        assert_eq!(run("a = '${HOST}'").unwrap(), "a = 'example.com'");
        assert_eq!(run("a = \"\"\"x${HOST}\"\"\"").unwrap(), "a = \"\"\"xexample.com\"\"\"");
        assert_eq!(run("a = '''${HOST}'''").unwrap(), "a = '''example.com'''");
        assert_eq!(run("a = \"${EMPTY}\"").unwrap(), "a = \"\"");
        assert_eq!(run("\"k${HOST}\" = 1").unwrap(), "\"kexample.com\" = 1");
    }

    #[test]
    fn escapes_values_for_basic_strings() {
        let text = run("a = \"${NASTY}\"").unwrap();
        assert_eq!(text, "a = \"a\\\"b\\\\c\\nd\\u0001\"");
        let table: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(table["a"].as_str(), Some("a\"b\\c\nd\u{1}"));
    }

    #[test]
    fn literal_strings_refuse_values_they_cannot_hold() {
        let errors = run("a = '${QUOTE}'").unwrap_err();
        assert_eq!(errors[0].col, 6);
        assert!(errors[0].message.contains("literal"), "{}", errors[0].message);
        assert_eq!(run("a = \"${QUOTE}\"").unwrap(), "a = \"it's\"");
    }

    #[test]
    fn comments_and_bare_text_are_left_alone() {
        let text = "# ${MISSING}\na = 1 # \"${MISSING}\"\nb = \"#${HOST}\" # ${MISSING}\n";
        assert_eq!(run(text).unwrap(), "# ${MISSING}\na = 1 # \"${MISSING}\"\nb = \"#example.com\" # ${MISSING}\n");
        // Escaped quotes do not end a basic string; a literal string has no escapes.
        assert_eq!(run(r#"a = "\"${HOST}""#).unwrap(), r#"a = "\"example.com""#);
        assert_eq!(run(r"a = 'x\' # ${MISSING}").unwrap(), r"a = 'x\' # ${MISSING}");
        // Quotes inside a multi-line string, and a closing run of more than three.
        assert_eq!(
            run("a = \"\"\"\"x\"\"${HOST}\"\"\"\"\nb = '#'").unwrap(),
            "a = \"\"\"\"x\"\"example.com\"\"\"\"\nb = '#'"
        );
    }

    #[test]
    fn dollar_dollar_is_a_literal() {
        assert_eq!(run("a = \"$${HOST} and $5 and $x\"").unwrap(), "a = \"${HOST} and $5 and $x\"");
    }

    #[test]
    fn missing_variables_are_all_reported_at_their_dollar() {
        let errors = run("a = 1\nb = \"x${NOPE}\"\n  c = \"é${ALSO_NOPE}\"\n").unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!((errors[0].line, errors[0].col), (2, 7));
        assert_eq!(errors[0].message, "environment variable `NOPE` is not set");
        assert_eq!((errors[1].line, errors[1].col), (3, 9));
        assert_eq!(errors[1].to_string(), "f.toml:3:9: environment variable `ALSO_NOPE` is not set");
    }

    #[test]
    fn malformed_references_are_errors() {
        for text in ["a = \"${}\"", "a = \"${1X}\"", "a = \"${HOST\"", "a = \"${HO-ST}\""] {
            let errors = run(text).unwrap_err();
            assert_eq!((errors[0].line, errors[0].col), (1, 6), "{text}");
        }
    }

    #[test]
    fn offsets_map_back_through_substitutions() {
        let text = "a = \"${HOST}\" x\nb = \"$${\" y\n";
        let expanded = expand("f.toml", text, &env).unwrap();
        let map = &expanded.map;
        // `x` on the first line, after a value 7 bytes longer than its reference.
        let x = expanded.text.find(" x").unwrap() + 1;
        assert_eq!(line_col(text, map.original_offset(x)), (1, 15));
        // Inside the value: the `${`.
        assert_eq!(map.original_offset(expanded.text.find("ample").unwrap()), 5);
        let y = expanded.text.find('y').unwrap();
        assert_eq!(line_col(text, map.original_offset(y)), (2, 11));
    }
}
