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
    Credential, CredentialKind, CredentialStatus, Identity, IdentityKind, Permissions, Tags,
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

/// Whether `c` must not appear raw where a person reads it (an error message, a terminal): it
/// breaks the line, acts on the terminal, or hides or reorders text. C0 and C1 controls (ESC,
/// CR, LF, BEL...), DEL, the Unicode line and paragraph separators, and every format character
/// (Unicode `Cf`: the bidirectional marks, embeddings, overrides and isolates, zero-width spaces
/// and joiners, the soft hyphen, invisible operators, the byte order mark, interlinear
/// annotations, the tag characters U+E0000..=U+E007F that hide ASCII text) and the other
/// invisible characters (fillers, the combining grapheme joiner, variation selectors) that make
/// a name look like another. The one list for error messages and the CLI's output.
pub fn is_unsafe_in_message(c: char) -> bool {
    // `is_control` is the Unicode `Cc` category: U+0000..=U+001F and U+007F..=U+009F.
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{034f}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061c}'
                | '\u{06dd}'
                | '\u{070f}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08e2}'
                | '\u{115f}'..='\u{1160}'
                | '\u{17b4}'..='\u{17b5}'
                | '\u{180b}'..='\u{180f}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{3164}'
                | '\u{fe00}'..='\u{fe0f}'
                | '\u{feff}'
                | '\u{ffa0}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{110bd}'
                | '\u{110cd}'
                | '\u{13430}'..='\u{1343f}'
                | '\u{1bca0}'..='\u{1bca3}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0000}'..='\u{e0fff}'
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
