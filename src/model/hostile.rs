//! Hostile strings for property tests of every parser of untrusted text: multi-byte characters
//! where a byte slice would split one, numbers that overflow, control and separator characters,
//! near-misses of valid forms.

use proptest::prelude::*;

/// Any of the shapes that broke parsers before (`-5€`, `+999999999d`, `prop_€…`).
pub fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("€"),
        Just("ሴ"),
        Just("🦀"),
        Just("-"),
        Just("+"),
        Just("9"),
        Just("0"),
        Just("d"),
        Just("h"),
        Just("s"),
        Just(":"),
        Just("/"),
        Just("prop_"),
        Just("demo-aws"),
        Just("\n"),
        Just("\r"),
        Just("\u{0}"),
        Just("\u{1b}["),
        Just("\u{2028}"),
        Just("\u{2029}"),
        Just("\u{202e}"),
        Just("`"),
        Just("\""),
        Just("\\"),
        Just("="),
        Just("T"),
        Just("Z"),
        Just("9999999999999999999999"),
    ];
    prop_oneof![
        any::<String>(),
        "\\PC{0,40}",
        "[+-]?[0-9]{0,25}[dhmsy€ሴ]?",
        any::<i64>().prop_map(|n| format!("{n:+}d")),
        any::<u64>().prop_map(|n| format!("+{n}h")),
        any::<u64>().prop_map(|n| format!("{n}s")),
        prop::collection::vec(piece, 0..16).prop_map(|v| v.concat()),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2}|€)",
    ]
}
