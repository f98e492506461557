//! A small JSON reader and writer over [`serde_json::Value`], with no serde machinery.
//!
//! The browser client ships its code over the network, and serde's generic (de)serializers
//! are most of it; this module, with [`crate::lite`], gives it the same values with a fraction
//! of the code. It reads RFC 8259 JSON the way `serde_json` reads it into a `Value`: integers
//! that fit become `u64`/`i64`, other numbers `f64`; a repeated key keeps the last value (as
//! `JSON.parse` does); nesting deeper than [`MAX_DEPTH`] is refused; anything after the value
//! but whitespace is an error. It writes compact JSON (`serde_json::to_string`'s escaping).

use std::fmt::{self, Write as _};

use serde_json::{Map, Number, Value};

/// The deepest nesting read (arrays and objects within each other), as `serde_json` reads.
pub const MAX_DEPTH: usize = 127;

/// Why a text is not JSON: what is wrong and the byte offset where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// What is wrong.
    pub reason: &'static str,
    /// Byte offset into the text.
    pub at: usize,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.at)
    }
}

impl std::error::Error for JsonError {}

/// Reads one JSON value from `text`.
pub fn parse(text: &str) -> Result<Value, JsonError> {
    let mut r = Reader {
        b: text.as_bytes(),
        text,
        i: 0,
    };
    let value = r.value(0)?;
    r.ws();
    if r.i < r.b.len() {
        return Err(r.err("trailing characters"));
    }
    Ok(value)
}

/// Takes a member out of an object: `None` when it is absent or `null`. (It leaves `null` in
/// its place: cheaper in code than removing it, which matters to the browser client.)
pub fn take(map: &mut Map<String, Value>, key: &str) -> Option<Value> {
    map.get_mut(key)
        .map(std::mem::take)
        .filter(|v| !v.is_null())
}

/// Writes `value` as compact JSON.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    write(&mut out, value);
    out
}

/// Appends `value` as compact JSON to `out`.
pub fn write(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

/// Appends an object as compact JSON.
pub fn write_object(out: &mut String, map: &Map<String, Value>) {
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, k);
        out.push(':');
        write(out, v);
    }
    out.push('}');
}

fn write_number(out: &mut String, n: &Number) {
    // `Number` holds a u64, an i64 or a finite f64.
    let _ = match (n.as_u64(), n.as_i64(), n.as_f64()) {
        (Some(u), _, _) => write!(out, "{u}"),
        (None, Some(i), _) => write!(out, "{i}"),
        (None, None, Some(f)) => {
            write_float(out, f);
            Ok(())
        }
        (None, None, None) => write!(out, "null"),
    };
}

/// Debug of f64 keeps a `.0` or an exponent, so the text reads back as a float.
#[cfg(not(all(feature = "js-numbers", target_arch = "wasm32")))]
fn write_float(out: &mut String, f: f64) {
    let _ = write!(out, "{f:?}");
}

/// JavaScript's `Number#toString`: the shortest text that reads back as `f` (`1e+21`, and `1`
/// for 1.0, as `JSON.stringify` writes it).
#[cfg(all(feature = "js-numbers", target_arch = "wasm32"))]
fn write_float(out: &mut String, f: f64) {
    match js_sys::Number::from(f)
        .to_string_with_radix(10)
        .ok()
        .and_then(|s| s.as_string())
    {
        Some(text) => out.push_str(&text),
        None => out.push_str("null"),
    }
}

#[cfg(not(all(feature = "js-numbers", target_arch = "wasm32")))]
fn parse_float(text: &str) -> Option<f64> {
    text.parse().ok()
}

/// JavaScript's `parseFloat` (given JSON number text, which it reads exactly as `JSON.parse`).
#[cfg(all(feature = "js-numbers", target_arch = "wasm32"))]
fn parse_float(text: &str) -> Option<f64> {
    Some(js_sys::Number::parse_float(text)).filter(|f| f.is_finite())
}

/// Appends a JSON string literal.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(cut(s, start, i));
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(cut(s, start, s.len()));
    out.push('"');
}

/// `s[from..to]`, for cuts next to an ASCII delimiter (always on a character boundary). Unlike
/// indexing it has no panic path, whose message formatting (it prints the character a cut
/// falls into, with Unicode tables) would otherwise be linked into the browser client.
pub(crate) fn cut(s: &str, from: usize, to: usize) -> &str {
    s.get(from..to).unwrap_or_default()
}

struct Reader<'a> {
    b: &'a [u8],
    text: &'a str,
    i: usize,
}

impl Reader<'_> {
    fn err(&self, reason: &'static str) -> JsonError {
        JsonError { reason, at: self.i }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, JsonError> {
        if self.b[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(value)
        } else {
            Err(self.err("expected a JSON value"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.ws();
        match self.peek() {
            None => Err(self.err("unexpected end of text")),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'"') => self.string().map(Value::String),
            Some(b'-' | b'0'..=b'9') => self.number().map(Value::Number),
            Some(b'[') => {
                let depth = self.nest(depth)?;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth)?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return Err(self.err("expected `,` or `]`")),
                    }
                }
            }
            Some(b'{') => {
                let depth = self.nest(depth)?;
                let mut map = Map::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(Value::Object(map));
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(self.err("expected a string key"));
                    }
                    let key = self.string()?;
                    self.ws();
                    if self.peek() != Some(b':') {
                        return Err(self.err("expected `:`"));
                    }
                    self.i += 1;
                    let value = self.value(depth)?;
                    map.insert(key, value);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Value::Object(map));
                        }
                        _ => return Err(self.err("expected `,` or `}`")),
                    }
                }
            }
            Some(_) => Err(self.err("expected a JSON value")),
        }
    }

    /// Enters an array or object.
    fn nest(&mut self, depth: usize) -> Result<usize, JsonError> {
        if depth >= MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        self.i += 1;
        Ok(depth + 1)
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Number, JsonError> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let int_start = self.i;
        match self.digits() {
            0 => return Err(self.err("invalid number")),
            n if n > 1 && self.b[int_start] == b'0' => return Err(self.err("invalid number")),
            _ => {}
        }
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
            float = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
            float = true;
        }
        let text = cut(self.text, start, self.i);
        if !float {
            if negative {
                if let Ok(i) = text.parse::<i64>() {
                    // `-0` is the float -0.0, as serde_json reads it.
                    if i != 0 {
                        return Ok(Number::from(i));
                    }
                }
            } else if let Ok(u) = text.parse::<u64>() {
                return Ok(Number::from(u));
            }
        }
        parse_float(text)
            .and_then(Number::from_f64)
            .ok_or(JsonError {
                reason: "number out of range",
                at: start,
            })
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .b
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.err("unexpected end of text"))?;
        let mut n = 0;
        for &d in digits {
            let v = (d as char)
                .to_digit(16)
                .ok_or_else(|| self.err("invalid \\u escape"))?;
            n = n * 16 + v;
        }
        self.i += 4;
        Ok(n)
    }

    /// A string literal; `self.i` is at its opening quote.
    fn string(&mut self) -> Result<String, JsonError> {
        self.i += 1;
        let mut out = String::new();
        let mut start = self.i;
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    out.push_str(cut(self.text, start, self.i));
                    self.i += 1;
                    return Ok(out);
                }
                Some(0..=0x1f) => return Err(self.err("control character in string")),
                Some(b'\\') => {
                    out.push_str(cut(self.text, start, self.i));
                    self.i += 1;
                    let c = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.i += 1;
                            let c = self.unicode()?;
                            out.push(c);
                            start = self.i;
                            continue;
                        }
                        _ => return Err(self.err("invalid escape")),
                    };
                    out.push(c);
                    self.i += 1;
                    start = self.i;
                }
                Some(_) => self.i += 1,
            }
        }
    }

    /// The character of a `\u` escape (after the `u`), joining a surrogate pair.
    fn unicode(&mut self) -> Result<char, JsonError> {
        let hi = self.hex4()?;
        let code = match hi {
            0xD800..=0xDBFF => {
                if !self.b[self.i..].starts_with(b"\\u") {
                    return Err(self.err("lone surrogate in \\u escape"));
                }
                self.i += 2;
                let lo = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return Err(self.err("lone surrogate in \\u escape"));
                }
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.err("lone surrogate in \\u escape")),
            c => c,
        };
        char::from_u32(code).ok_or_else(|| self.err("invalid \\u escape"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads like serde_json and writes what serde_json reads back to the same value.
    #[test]
    fn agrees_with_serde_json() {
        let texts = [
            r#"{"a":1,"b":[true,false,null],"c":{"d":"e"}}"#,
            r#"  [ -1 , 0 , 18446744073709551615 , 18446744073709551616 , -9223372036854775808 ] "#,
            r#"[1.5, -0.0, -0, 1e3, 1E-7, 2.5e+300, 0.1, 123456789012345678901234567890]"#,
            r#""esc \" \\ \/ \b \f \n \r \t \u00e9 \ud83d\ude00 \u0000""#,
            r#"{"a":1,"a":2}"#,
            "\"ünïcödé ✓\"",
            "{}",
            "[]",
            "[[[[]]]]",
        ];
        for text in texts {
            let ours = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let theirs: Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
            let written = to_string(&ours);
            assert_eq!(parse(&written).unwrap(), ours, "{written}");
            assert_eq!(serde_json::from_str::<Value>(&written).unwrap(), ours);
            // serde_json writes exponents as `e+19`, Rust as `e19`: the same number.
            assert_eq!(
                written,
                serde_json::to_string(&theirs).unwrap().replace("e+", "e")
            );
        }
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        let bad = [
            "",
            " ",
            "nul",
            "[1,]",
            "{\"a\":1,}",
            "{a:1}",
            "[1 2]",
            "01",
            "1.",
            ".5",
            "1e",
            "-",
            "+1",
            "\"abc",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "\"tab\there\"",
            "1e400",
            "[1] x",
            "{\"a\" 1}",
            "NaN",
            "[",
            "{",
        ];
        for text in bad {
            assert!(parse(text).is_err(), "{text:?} parsed");
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn limits_nesting_like_serde_json() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        assert!(serde_json::from_str::<Value>(&ok).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(parse(&deep).unwrap_err().reason, "nesting too deep");
        assert!(serde_json::from_str::<Value>(&deep).is_err());
        // Far deeper than the limit: an error, not a stack overflow.
        assert!(parse(&"[{\"a\":".repeat(100_000)).is_err());
    }
}
