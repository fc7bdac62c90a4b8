//! Principal ids: one spelling per person. Every id that names a caller or an approver (config,
//! bearer tokens, the CLI, the admin API) goes through [`normalize`] before it is compared or
//! stored, so `Alice`, `alice `, `ａｌｉｃｅ` are one principal, and ids with characters outside
//! [`ALLOWED`] (zero-width characters, Cyrillic or Greek look-alikes, spaces, controls) are
//! refused instead of counting as someone new.
//!
//! The normal form is Unicode NFKC, then lowercase, then trimmed. Lowercasing after NFKC is
//! enough (no full case folding, no `caseless` crate): the result must be ASCII anyway, and the
//! only characters where full case folding differs from lowercasing fold to something non-ASCII
//! or to several letters (`ß` → `ss`); we would rather refuse those than map them.

use unicode_normalization::UnicodeNormalization;

use crate::model::{InvalidInput, quote_input};

/// The longest principal id, in bytes (= characters: ids are ASCII).
pub const MAX_LEN: usize = 128;

/// The characters a normalised principal id may contain, besides ASCII lowercase letters and
/// digits: enough for emails (`a.b+c@d`), URIs and OAuth subjects (`auth0|123`, `spiffe://x/y`).
pub const ALLOWED: &str = ". _ - : @ / + |";

/// Names the server itself writes into audit records; nobody may be configured or
/// authenticated under them.
pub const RESERVED: [&str; 4] = ["nhi-mcp", "cli:local", "anonymous", "unauthenticated"];

/// Prefixes kept for the server's own principals.
pub const RESERVED_PREFIXES: [&str; 2] = ["nhi-mcp:", "cli:"];

/// The normal form without any check: NFKC, lowercase, trimmed.
pub fn fold(raw: &str) -> String {
    let nfkc: String = raw.nfkc().collect();
    nfkc.to_lowercase()
        .nfkc()
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Whether `a` and `b` name the same principal (compares normal forms).
pub fn same(a: &str, b: &str) -> bool {
    fold(a) == fold(b)
}

fn allowed(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_:@/+|".contains(c)
}

/// The normal form of `raw`, or why it is not a usable principal id. `what` names the field.
pub fn normalize(what: &str, raw: &str) -> Result<String, InvalidInput> {
    let id = fold(raw);
    if id.is_empty() {
        return Err(InvalidInput(format!("{what} is empty")));
    }
    if let Some(c) = id.chars().find(|c| !allowed(*c)) {
        return Err(InvalidInput(format!(
            "{what} {} has {}, which a principal id may not contain (allowed: ASCII letters, digits and {ALLOWED})",
            quote_input(raw),
            describe(c)
        )));
    }
    if id.len() > MAX_LEN {
        return Err(InvalidInput(format!(
            "{what} {} is longer than {MAX_LEN} characters",
            quote_input(raw)
        )));
    }
    Ok(id)
}

/// [`normalize`], and the result must not be one of the server's own names: for every id that
/// comes from outside (config, tokens, the CLI).
pub fn parse_external(what: &str, raw: &str) -> Result<String, InvalidInput> {
    let id = normalize(what, raw)?;
    if is_reserved(&id) {
        return Err(InvalidInput(format!(
            "{what} {} is reserved for the server's own audit records (reserved: {}, and ids starting with {})",
            quote_input(raw),
            RESERVED.join(", "),
            RESERVED_PREFIXES.join(" or ")
        )));
    }
    Ok(id)
}

/// Refuses an id that is not already in normal form; for code that receives ids another layer
/// should have normalised (a second line of defence, e.g. in the engine).
pub fn check_normal(what: &str, id: &str) -> Result<(), InvalidInput> {
    let normal = normalize(what, id)?;
    if normal != id {
        return Err(InvalidInput(format!(
            "{what} {} is not in normal form (it would be {})",
            quote_input(id),
            quote_input(&normal)
        )));
    }
    Ok(())
}

pub fn is_reserved(id: &str) -> bool {
    RESERVED.contains(&id) || RESERVED_PREFIXES.iter().any(|p| id.starts_with(p))
}

/// A character for an error message: printable ASCII as itself, anything else as `U+XXXX`.
fn describe(c: char) -> String {
    if c.is_ascii_graphic() {
        format!("`{c}`")
    } else if c == ' ' {
        "a space".to_owned()
    } else {
        format!("U+{:04X}", u32::from(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_name_are_one_principal() {
        for raw in [
            "alice",
            "Alice",
            "ALICE",
            "alice ",
            " alice\t",
            "alice\n",
            "\u{3000}alice",
            "ａｌｉｃｅ",
            "Ａｌｉｃｅ",
        ] {
            assert_eq!(normalize("id", raw).as_deref(), Ok("alice"), "{raw:?}");
        }
        // NFKC maps compatibility characters onto ASCII: the long s and the Kelvin sign.
        assert_eq!(normalize("id", "\u{17f}am").as_deref(), Ok("sam"));
        assert_eq!(normalize("id", "\u{212a}im").as_deref(), Ok("kim"));
    }

    #[test]
    fn look_alikes_and_invisible_characters_are_refused() {
        for raw in [
            "alice\u{200b}",
            "al\u{200d}ice",
            "\u{feff}alice",
            "\u{430}lice", // Cyrillic а
            "\u{3b1}lice", // Greek α
            "al\u{131}ce", // dotless ı
            "stra\u{df}e", // ß
            "al ice",
            "ali\nce",
            "alice\u{1b}[31m",
            "e\u{301}",
            "",
            "   ",
            "\u{200b}",
        ] {
            let e = normalize("`id`", raw).expect_err(raw);
            assert!(!e.0.contains('\n'), "{e:?}");
            assert!(e.0.starts_with("`id`"), "{e:?}");
        }
        let e = normalize("`id`", "alice\u{200b}").expect_err("zwsp");
        assert!(e.0.contains("U+200B"), "{}", e.0);
    }

    #[test]
    fn the_length_limit_is_on_the_normal_form() {
        assert!(normalize("id", &"a".repeat(MAX_LEN)).is_ok());
        assert!(normalize("id", &format!("{} ", "a".repeat(MAX_LEN))).is_ok());
        assert!(normalize("id", &"a".repeat(MAX_LEN + 1)).is_err());
        // Multi-byte input that folds to ASCII counts as its normal form.
        assert!(normalize("id", &"ａ".repeat(MAX_LEN)).is_ok());
    }

    #[test]
    fn the_servers_own_names_are_reserved_in_any_spelling() {
        for raw in [
            "nhi-mcp",
            "NHI-MCP",
            "cli:local",
            "CLI:Local ",
            "ｃｌｉ:local",
            "anonymous",
            "Anonymous",
            "unauthenticated",
            "cli:other",
            "nhi-mcp:x",
        ] {
            assert!(normalize("id", raw).is_ok(), "{raw:?}");
            let e = parse_external("`id`", raw).expect_err(raw);
            assert!(e.0.contains("reserved"), "{}", e.0);
        }
        assert!(parse_external("id", "nhi-mcp-bot").is_ok());
        assert!(parse_external("id", "agent:local").is_ok());
    }

    #[test]
    fn check_normal_refuses_other_spellings() {
        assert!(check_normal("id", "agent:local").is_ok());
        assert!(check_normal("id", "Agent:Local").is_err());
        assert!(check_normal("id", "agent:local ").is_err());
        assert!(same("Agent:Local", "agent:local "));
        assert!(!same("agent:local", "agent:loca1"));
    }
}
