//! A minimal JSON object writer for the console's `--json` output.

use alloc::string::String;
use core::fmt::Write;

/// Builds one JSON object on one line: `{"a":1,"b":"x"}`.
#[derive(Debug, Default)]
pub struct JsonObject {
    out: String,
    fields: usize,
}

impl JsonObject {
    /// An empty object.
    pub fn new() -> Self {
        JsonObject {
            out: String::from("{"),
            fields: 0,
        }
    }

    fn key(&mut self, key: &str) {
        if self.fields > 0 {
            self.out.push(',');
        }
        self.fields += 1;
        write_string(&mut self.out, key);
        self.out.push(':');
    }

    /// Adds a string field.
    pub fn string(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        write_string(&mut self.out, value);
        self
    }

    /// Adds an unsigned number field.
    pub fn uint(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        let _ = write!(self.out, "{value}");
        self
    }

    /// Adds a signed number field.
    pub fn int(mut self, key: &str, value: i64) -> Self {
        self.key(key);
        let _ = write!(self.out, "{value}");
        self
    }

    /// Adds a boolean field.
    pub fn boolean(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        self.out.push_str(if value { "true" } else { "false" });
        self
    }

    /// Adds a field whose value is already JSON (an object or an array).
    pub fn raw(mut self, key: &str, json: &str) -> Self {
        self.key(key);
        self.out.push_str(json);
        self
    }

    /// Closes the object.
    pub fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// Writes `s` as a JSON string literal (quotes, escapes).
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Joins already-encoded JSON values into an array.
pub fn array<I: IntoIterator<Item = String>>(items: I) -> String {
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn object_with_escapes() {
        let s = JsonObject::new()
            .uint("node", 1)
            .string("state", "Ma\"ster\n")
            .boolean("ok", true)
            .int("d", -3)
            .raw("list", &array(vec![String::from("1"), String::from("2")]))
            .finish();
        assert_eq!(
            s,
            r#"{"node":1,"state":"Ma\"ster\n","ok":true,"d":-3,"list":[1,2]}"#
        );
    }
}
