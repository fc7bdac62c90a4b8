//! Redaction of what the audit log stores: secrets are found by their argument's name (even
//! misspelt: `approval_tokens`, `approvalToken`) and by their shape wherever they appear (a JWT,
//! an AWS access key id or secret key, a PEM block, a URL's password), in values and in keys.

use base64::Engine as _;
use serde_json::Value;

/// What a redacted secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Fragments of argument names whose values are secret, compared with the name lowercased and
/// stripped of everything but letters and digits.
const SECRET_NAME_PARTS: [&str; 7] = [
    "token",
    "secret",
    "password",
    "passwd",
    "apikey",
    "privatekey",
    "credential",
];

/// Names that hold identifiers the server validated and the log must keep (a credential id is
/// an access key id for AWS: not a secret, and what an auditor looks for).
const ID_NAMES: [&str; 3] = ["credential_id", "identity_id", "proposal_id"];

/// Replaces the values of secret arguments, and secret-shaped text anywhere, at any depth.
pub fn redact(arguments: &Value) -> Value {
    redact_value(arguments, false)
}

/// The most of an unparsable call's arguments the log keeps, in bytes of redacted JSON.
pub const MAX_UNPARSED_LEN: usize = 2 * 1024;

/// What the log keeps of arguments that did not parse (a mistyped name can hide a secret the
/// name rules miss): the redacted JSON text cut to [`MAX_UNPARSED_LEN`] bytes, its size, and the
/// SHA-256 of the arguments as received.
pub fn unparsed_arguments(arguments: &Value) -> Value {
    let text = redact(arguments).to_string();
    let mut cut = MAX_UNPARSED_LEN.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    serde_json::json!({
        "unparsed": &text[..cut],
        "truncated": cut < text.len(),
        "bytes": arguments.to_string().len(),
        "sha256": crate::model::canonical::digest(arguments).unwrap_or_default(),
    })
}

fn redact_value(value: &Value, is_id: bool) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_secret_name(k) {
                        Value::String(REDACTED.to_owned())
                    } else {
                        redact_value(v, ID_NAMES.contains(&k.as_str()))
                    };
                    (redact_text(k, false), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| redact_value(v, false)).collect()),
        Value::String(s) => Value::String(redact_text(s, is_id)),
        other => other.clone(),
    }
}

fn is_secret_name(name: &str) -> bool {
    if ID_NAMES.contains(&name) {
        return false;
    }
    let folded: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    SECRET_NAME_PARTS.iter().any(|p| folded.contains(p))
}

/// `text` with every secret-shaped part replaced; `is_id` keeps AWS access key ids (the value
/// of an id argument).
pub fn redact_text(text: &str, is_id: bool) -> String {
    let text = redact_pem(text);
    let text = redact_url_passwords(&text);
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if !word.is_empty() {
            if is_secret_word(word, is_id) {
                out.push_str(REDACTED);
            } else {
                out.push_str(word);
            }
            word.clear();
        }
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=' | '+' | '/') {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn is_secret_word(word: &str, is_id: bool) -> bool {
    let word = word.trim_matches(|c| matches!(c, '.' | '/' | '-' | '='));
    is_jwt(word) || (!is_id && is_aws_access_key_id(word)) || is_aws_secret_key(word)
}

/// Three (JWS) or five (JWE) base64url segments whose first decodes to a JSON object.
fn is_jwt(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    if !(parts.len() == 3 || parts.len() == 5) || parts[0].is_empty() {
        return false;
    }
    let b64url = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !parts.iter().all(|p| b64url(p)) {
        return false;
    }
    if parts[0].starts_with("eyJ") {
        return true;
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[0])
        .ok()
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        .is_some_and(|h| h.is_object())
}

/// `AKIA…` and its kin: a four-letter prefix and 16 upper-case letters or digits.
fn is_aws_access_key_id(word: &str) -> bool {
    const PREFIXES: [&str; 11] = [
        "AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AIPA", "ANPA", "ANVA", "APKA", "AROA",
    ];
    word.len() == 20
        && PREFIXES.iter().any(|p| word.starts_with(p))
        && word
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// 40 characters of base64 with upper and lower case letters and a digit: an AWS secret key.
fn is_aws_secret_key(word: &str) -> bool {
    word.len() == 40
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'+')
        && word.bytes().any(|b| b.is_ascii_uppercase())
        && word.bytes().any(|b| b.is_ascii_lowercase())
        && word.bytes().any(|b| b.is_ascii_digit())
}

/// Replaces `-----BEGIN …-----` up to its `-----END …-----` (or the end of the text).
fn redact_pem(text: &str) -> String {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        out.push_str(&rest[..start]);
        out.push_str(REDACTED);
        let block = &rest[start..];
        rest = match block.find(END) {
            Some(end) => {
                let tail = &block[end + END.len()..];
                // Past the label and the closing dashes.
                match tail.find("-----") {
                    Some(close) => &tail[close + 5..],
                    None => "",
                }
            }
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// `scheme://user:password@host` → `scheme://user:[redacted]@host`.
fn redact_url_passwords(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..=colon]);
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const JWT: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";

    #[test]
    fn secrets_under_misspelt_names_are_redacted() {
        for name in [
            "approval_tokens",
            "approvalToken",
            "APPROVAL-TOKEN",
            "db_password",
        ] {
            let r = redact(&json!({ name: "s3cr3t-value" }));
            assert_eq!(r[name], REDACTED, "{name}");
        }
        let kept = redact(&json!({"credential_id": "AKIAIOSFODNN7EXAMPLE", "reason": "r"}));
        assert_eq!(kept["credential_id"], "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(kept["reason"], "r");
    }

    #[test]
    fn secrets_are_found_by_shape_anywhere() {
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"x"}"#);
        let cases = [
            (format!("token {JWT} here"), JWT.to_owned()),
            (format!("{header}.e30.sig"), header.clone()),
            (
                "key AKIAIOSFODNN7EXAMPLE and wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            ),
            ("AKIAIOSFODNN7EXAMPLE".into(), "AKIAIOSFODNN7EXAMPLE".into()),
            (
                "a -----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY----- b".into(),
                "MIIEv".into(),
            ),
            (
                "postgres://admin:hunter2@db:5432/x".into(),
                "hunter2".into(),
            ),
        ];
        for (text, secret) in cases {
            let r = redact(&json!({"wrong_name": [text.clone()], text.clone(): 1}));
            let stored = r.to_string();
            assert!(!stored.contains(&secret), "{secret} kept in {stored}");
            assert!(stored.contains(REDACTED), "{stored}");
        }
        let big = json!({"approvalTokn": JWT, "x": "y".repeat(10_000)});
        let kept = unparsed_arguments(&big);
        let stored = kept.to_string();
        assert!(
            !stored.contains(JWT) && stored.len() < MAX_UNPARSED_LEN + 200,
            "{stored}"
        );
        assert_eq!(kept["truncated"], true);
        let plain = "rotate demo-aws:user/ci-deploy, owner alice@example.com: https://x.example/a";
        assert_eq!(redact_text(plain, false), plain);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        #[test]
        fn redaction_never_panics_and_finds_a_token_anywhere(
            before in crate::model::hostile::text(),
            after in crate::model::hostile::text(),
        ) {
            let text = format!("{before} {JWT} {after}");
            let r = redact(&json!({"x": text, "y": [format!("postgres://u:pw@h/{before}")]}));
            proptest::prop_assert!(!r.to_string().contains(JWT));
            let _ = unparsed_arguments(&json!({ before.clone(): after }));
        }
    }
}
