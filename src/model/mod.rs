//! Plain data of the domain: identities, credentials, findings, proposals. No I/O, no MCP, no SQL.

pub mod canonical;
pub mod finding;
#[cfg(test)]
pub mod hostile;
pub mod identity;
pub mod ids;
pub mod proposal;
pub mod secret;

pub use finding::{Finding, FindingRule, Severity, Thresholds};
pub use identity::{
    Credential, CredentialKind, CredentialStatus, Identity, IdentityKind, Permissions,
};
pub use ids::{CredentialId, IdentityId, InvalidInput, ProposalId, ProviderName};
pub use proposal::{Action, PlanStep, Proposal, ProposalBody, ProposalStatus, StepAction};
pub use secret::Secret;

/// The most characters of one input that an error message echoes.
pub const QUOTE_MAX_CHARS: usize = 64;

/// Renders user input for an error message: in backticks, cut at 64 characters (then `…`),
/// control characters, line and paragraph separators, bidirectional overrides and zero-width
/// characters escaped, so a hostile string can neither forge log or header lines nor flood a
/// message. Every echo of input goes through here.
pub fn quote_input(input: &str) -> String {
    let mut out = String::with_capacity(input.len().min(4 * QUOTE_MAX_CHARS) + 8);
    out.push('`');
    push_escaped(&mut out, input, QUOTE_MAX_CHARS);
    out.push('`');
    out
}

/// Makes a whole message safe to show: one line, the same characters escaped as in
/// [`quote_input`], at most `max` characters (then `…`). The backstop for messages that other
/// code (a parser, a library) wrote and that may carry input.
pub fn one_line(message: &str, max: usize) -> String {
    let mut out = String::with_capacity(message.len().min(4 * max) + 4);
    push_escaped(&mut out, message, max);
    out
}

/// The longest error message a caller gets, in characters.
pub const MESSAGE_MAX_CHARS: usize = 500;

/// Bounds a message another component wrote (serde via rmcp, a parser): every span in backticks
/// or double quotes, where such messages put the input they echo, is cut to 64 characters, and
/// the whole is made one line of at most [`MESSAGE_MAX_CHARS`].
pub fn bound_echoes(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(4 * MESSAGE_MAX_CHARS));
    for (i, delimiter) in ['`', '"'].into_iter().enumerate() {
        let source = if i == 0 {
            message.to_owned()
        } else {
            std::mem::take(&mut out)
        };
        for (n, part) in source.split(delimiter).enumerate() {
            if n > 0 {
                out.push(delimiter);
            }
            if n % 2 == 1 && part.chars().count() > QUOTE_MAX_CHARS {
                out.extend(part.chars().take(QUOTE_MAX_CHARS));
                out.push('…');
            } else {
                out.push_str(part);
            }
        }
    }
    one_line(&out, MESSAGE_MAX_CHARS)
}

/// Whether `c` must not appear raw in a message: it breaks the line, hides or reorders text.
pub fn is_unsafe_in_message(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' // line and paragraph separators
                | '\u{200b}'..='\u{200f}' // zero-width, direction marks
                | '\u{202a}'..='\u{202e}' // bidirectional embeddings and overrides
                | '\u{2066}'..='\u{2069}' // bidirectional isolates
                | '\u{feff}' // byte order mark
        )
}

fn push_escaped(out: &mut String, input: &str, max: usize) {
    for (i, c) in input.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if is_unsafe_in_message(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_is_bounded_one_line_and_escaped() {
        let q = quote_input(&"k".repeat(100_000));
        assert_eq!(q.chars().count(), QUOTE_MAX_CHARS + 3, "{q}");
        assert!(q.starts_with('`') && q.ends_with("…`"));
        let q = quote_input("a\r\nb\u{2028}c\u{2029}d\u{1b}[31m\u{202e}e");
        assert_eq!(q, "`a\\r\\nb\\u{2028}c\\u{2029}d\\u{1b}[31m\\u{202e}e`");
        // Multi-byte input is cut on a character, never inside one.
        let q = quote_input(&"€".repeat(65));
        assert_eq!(q, format!("`{}…`", "€".repeat(64)));
        assert_eq!(one_line("x\ny", 10), "x\\ny");
        assert_eq!(one_line("abcdef", 3), "abc…");
        let long = "x".repeat(100_162);
        let m = bound_echoes(&format!(
            "unknown variant `{long}`, expected `a`; got string \"{long}\"\n"
        ));
        assert!(m.chars().count() < 200 && !m.contains('\n'), "{m}");
        assert!(m.contains(", expected `a`; got string \""), "{m}");
    }
}
