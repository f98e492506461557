//! `redistribute pub` fields: `key=value` publishes the JSON string `"value"`, `key:=<json>`
//! publishes a JSON value (httpie's syntax).

use redistribute_client::Fields;
use serde_json::Value;

/// Parses the field arguments into a message. Errors name the offending argument.
pub fn parse_fields<S: AsRef<str>>(args: &[S]) -> Result<Fields, String> {
    let mut fields = Fields::new();
    for arg in args {
        let arg = arg.as_ref();
        let (key, value) = parse_field(arg)?;
        if fields.contains_key(&key) {
            return Err(format!("field {key:?} is given twice"));
        }
        fields.insert(key, value);
    }
    if fields.is_empty() {
        return Err("a message needs at least one field (key=value or key:=<json>)".into());
    }
    Ok(fields)
}

/// One `key=value` or `key:=<json>`; the first `=` separates key and value.
fn parse_field(arg: &str) -> Result<(String, Value), String> {
    let Some(eq) = arg.find('=') else {
        return Err(format!(
            "bad field {arg:?}: expected key=value (a string) or key:=<json> (a JSON value)"
        ));
    };
    let is_json = arg[..eq].ends_with(':');
    let key = if is_json { &arg[..eq - 1] } else { &arg[..eq] };
    if key.is_empty() {
        return Err(format!("bad field {arg:?}: the key is empty"));
    }
    let raw = &arg[eq + 1..];
    let value = if is_json {
        serde_json::from_str(raw)
            .map_err(|e| format!("bad field {arg:?}: the value after := is not JSON ({e})"))?
    } else {
        Value::String(raw.to_owned())
    };
    Ok((key.to_owned(), value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_and_json_values() {
        let fields = parse_fields(&[
            "text=hello world",
            "n:=42",
            "ok:=true",
            "tags:=[\"a\",1]",
            "eq=a=b",
            "empty=",
            "k:v=x",
        ])
        .unwrap();
        assert_eq!(
            Value::Object(fields),
            json!({"text": "hello world", "n": 42, "ok": true, "tags": ["a", 1],
                   "eq": "a=b", "empty": "", "k:v": "x"})
        );
    }

    #[test]
    fn bad_syntax_names_the_argument() {
        let err = parse_fields(&["text"]).unwrap_err();
        assert!(
            err.contains("\"text\"") && err.contains("key=value"),
            "{err}"
        );
        let err = parse_fields(&["n:=forty"]).unwrap_err();
        assert!(
            err.contains("\"n:=forty\"") && err.contains("not JSON"),
            "{err}"
        );
        assert!(parse_fields(&["=v"]).unwrap_err().contains("key is empty"));
        assert!(parse_fields(&[":=1"]).unwrap_err().contains("key is empty"));
        assert!(parse_fields(&["a=1", "a:=2"])
            .unwrap_err()
            .contains("twice"));
        assert!(parse_fields::<&str>(&[]).is_err());
    }
}
