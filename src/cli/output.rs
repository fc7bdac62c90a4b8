//! What the CLI prints from data goes through here: identity owners, names and purposes,
//! principals, reasons and error messages can hold terminal escape sequences, line breaks or
//! bidirectional overrides, and a table must not let them move the cursor, recolour the
//! terminal, forge a line or reorder what the admin reads.

use std::borrow::Cow;
use std::fmt::Write as _;

// The one list of characters that must not reach a person raw, shared with error messages.
use crate::model::is_unsafe_in_message as is_unsafe;

/// `text` with every unsafe character replaced by a visible escape: `\n`, `\r`, `\t`, `\x1b`
/// for the other ASCII controls and DEL, `\u{202e}` for the rest. Text without one comes back
/// unchanged and unallocated.
pub fn term(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii() && is_unsafe(c) => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `term` of an optional field, `-` when absent.
pub fn term_or_dash(text: Option<&str>) -> Cow<'_, str> {
    text.map_or(Cow::Borrowed("-"), term)
}

/// `text` escaped, then cut to `max` characters (with `…`), for a table column.
pub fn term_cut(text: &str, max: usize) -> String {
    let escaped = term(text);
    if escaped.chars().count() <= max {
        return escaped.into_owned();
    }
    let mut cut: String = escaped.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Serialised JSON made safe for a terminal. serde_json escapes C0 controls but writes DEL, C1
/// controls, U+2028/U+2029, the bidirectional and the other invisible characters raw; these
/// become `\uXXXX` escapes (a UTF-16 surrogate pair for those past the Basic Multilingual Plane,
/// such as the tag characters), which keeps the JSON valid and equal in value (they can only
/// occur inside strings).
pub fn json(value: &impl serde::Serialize, pretty: bool) -> serde_json::Result<String> {
    let text = if pretty {
        serde_json::to_string_pretty(value)?
    } else {
        serde_json::to_string(value)?
    };
    // serde_json writes no raw control character inside a string: a raw LF is the layout of
    // pretty output, and stays.
    let unsafe_here = |c: char| c != '\n' && is_unsafe(c);
    if !text.chars().any(unsafe_here) {
        return Ok(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_here(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unsafe_character_becomes_a_visible_escape() {
        for (input, want) in [
            ("plain owner", "plain owner"),
            ("\u{1b}[31mred", "\\x1b[31mred"),
            ("a\r\nb\tc", "a\\r\\nb\\tc"),
            ("del\u{7f}", "del\\x7f"),
            ("c1\u{9b}2J", "c1\\u{9b}2J"),
            ("\u{202e}gnp.exe", "\\u{202e}gnp.exe"),
            ("line\u{2028}sep\u{2029}", "line\\u{2028}sep\\u{2029}"),
            ("alice\u{200b}", "alice\\u{200b}"),
            ("\u{2066}iso\u{2069}", "\\u{2066}iso\\u{2069}"),
            ("bell\u{7}", "bell\\x07"),
            ("nul\0", "nul\\x00"),
            // Invisible format characters that make one name look like another, and ASCII
            // hidden in tag characters.
            ("ali\u{200d}ce", "ali\\u{200d}ce"),
            ("ali\u{200c}ce", "ali\\u{200c}ce"),
            ("ali\u{ad}ce", "ali\\u{ad}ce"),
            ("a\u{2064}b\u{206a}c", "a\\u{2064}b\\u{206a}c"),
            ("a\u{180e}b\u{3164}c", "a\\u{180e}b\\u{3164}c"),
            ("a\u{fe0f}\u{34f}b", "a\\u{fe0f}\\u{34f}b"),
            (
                "ok\u{e0001}\u{e0041}\u{e007f}",
                "ok\\u{e0001}\\u{e0041}\\u{e007f}",
            ),
            ("\u{feff}bom", "\\u{feff}bom"),
            // Multi-byte text that is not a control stays as it is.
            ("ünïcødé €5 аlice 日本", "ünïcødé €5 аlice 日本"),
        ] {
            assert_eq!(term(input), want, "{input:?}");
        }
    }

    #[test]
    fn cut_counts_characters_not_bytes() {
        assert_eq!(term_cut("€€€€€", 3), "€€…");
        assert_eq!(term_cut("€€€", 3), "€€€");
        assert_eq!(term_cut("\u{1b}x", 3), "\\x…");
    }

    #[test]
    fn json_stays_valid_and_equal() {
        let value = serde_json::json!({
            "owner": "\u{1b}]0;x\u{7}\u{7f}\u{85}\u{202e}\u{2028}ok",
            // Past the Basic Multilingual Plane: a tag character becomes a surrogate pair.
            "name": "ci\u{200d}\u{e0041}\u{e0042}-deploy 日本",
        });
        for pretty in [false, true] {
            let text = json(&value, pretty).expect("json");
            assert!(!text.chars().any(|c| c != '\n' && is_unsafe(c)), "{text:?}");
            assert_eq!(text.lines().count() > 1, pretty, "{text:?}");
            let back: serde_json::Value = serde_json::from_str(&text).expect("valid json");
            assert_eq!(back, value);
            assert!(text.contains("\\udb40\\udc41"), "{text:?}");
        }
    }
}
