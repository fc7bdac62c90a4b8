//! The inventory file format (TOML, or JSON for a `.json` file); `examples/inventory/README.md`
//! documents it. Times are RFC 3339 or relative to today's UTC midnight (`-30d`, `+7d`, `-6h`),
//! so that a demo inventory does not age.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveTime, TimeDelta, Utc};
use serde::Deserialize;

use crate::model::{
    Credential, CredentialId, CredentialKind, CredentialStatus, Identity, IdentityId, IdentityKind,
    Permissions, ProviderName, one_line, quote_input,
};

/// The longest error message about a file, in characters.
const MAX_MESSAGE_CHARS: usize = 400;

/// A malformed inventory; the message names the file, and the line and key where it can.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InventoryError {
    pub message: String,
}

/// The top level of a file, `identities` (optional) and nothing else, read one identity at a
/// time: each is handed to `each` as soon as it is parsed, so the parser's temporary strings
/// and maps for one identity are freed (and reused by the next) instead of the whole file's
/// being held until the end and freed as holes between the identities kept.
struct Streamed<'f, F>(&'f mut F);

impl<'de, F: FnMut(RawIdentity) -> bool> serde::de::DeserializeSeed<'de> for Streamed<'_, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_struct("RawInventory", &["identities"], self)
    }
}

impl<'de, F: FnMut(RawIdentity) -> bool> serde::de::Visitor<'de> for Streamed<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("struct RawInventory")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error as _;
        // A key other than `identities` is refused while it is read, so the parser puts its
        // position (the line) on the error.
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum Key {
            Identities,
        }
        let mut seen = false;
        while let Some(Key::Identities) = map.next_key::<Key>()? {
            if std::mem::replace(&mut seen, true) {
                return Err(A::Error::duplicate_field("identities"));
            }
            map.next_value_seed(Identities(&mut *self.0))?;
        }
        Ok(())
    }
}

/// The `identities` array, element by element; `each` answers `false` to stop at an
/// identity it refused (it keeps the reason).
struct Identities<'f, F>(&'f mut F);

impl<'de, F: FnMut(RawIdentity) -> bool> serde::de::DeserializeSeed<'de> for Identities<'_, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(RawIdentity) -> bool> serde::de::Visitor<'de> for Identities<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<RawIdentity>()? {
            if !(self.0)(raw) {
                return Err(serde::de::Error::custom("refused"));
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    native_id: String,
    kind: IdentityKind,
    name: String,
    owner: Option<String>,
    purpose: Option<String>,
    environment: Option<String>,
    #[serde(default)]
    used_in_environments: Vec<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    created_at: String,
    last_used_at: Option<String>,
    permissions: RawPermissions,
    #[serde(default)]
    credentials: Vec<RawCredential>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPermissions {
    #[serde(default)]
    privileged: bool,
    wildcard: Option<bool>,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    grants: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    id: String,
    kind: CredentialKind,
    created_at: String,
    last_used_at: Option<String>,
    expires_at: Option<String>,
    status: CredentialStatus,
}

/// Parses an inventory for provider `name`, sorted by id; `origin` names the file in errors.
pub fn parse_inventory(
    name: &ProviderName,
    text: &str,
    origin: &str,
    json: bool,
) -> Result<Vec<Identity>, InventoryError> {
    // Parser messages (serde's, toml's) can echo a whole hostile value: bound and escape them.
    let err = |message: String| InventoryError {
        message: one_line(&format!("inventory {origin}: {message}"), MAX_MESSAGE_CHARS),
    };
    let anchor = Utc::now().date_naive().and_time(NaiveTime::MIN).and_utc();
    let mut out = Vec::new();
    let mut refused: Option<InventoryError> = None;
    let mut each = |r: RawIdentity| match identity(name, r, anchor, &err) {
        Ok(identity) => {
            out.push(identity);
            true
        }
        Err(e) => {
            refused = Some(e);
            false
        }
    };
    let parsed = if json {
        use serde::de::DeserializeSeed as _;
        let mut de = serde_json::Deserializer::from_str(text);
        Streamed(&mut each)
            .deserialize(&mut de)
            .and_then(|()| de.end())
            .map_err(|e| format!("line {}: {e}", e.line()))
    } else {
        use serde::de::DeserializeSeed as _;
        Streamed(&mut each)
            .deserialize(toml::Deserializer::new(text))
            .map_err(|e| crate::config::toml_error_line(text, &e))
    };
    if let Some(e) = refused {
        return Err(e);
    }
    parsed.map_err(err)?;
    // Ids and credential ids are unique in the file: checked once everything is read, with a
    // set of borrowed ids (one allocation, freed whole) rather than a copy of each.
    let mut ids = std::collections::HashSet::with_capacity(out.len());
    let mut creds = std::collections::HashSet::new();
    for i in &out {
        let at = || format!("identity {}", quote_input(&i.native_id));
        if !ids.insert(i.id.as_str()) {
            return Err(err(format!("{}: `native_id` is used twice", at())));
        }
        for c in &i.credentials {
            if !creds.insert(c.id.as_str()) {
                return Err(err(format!(
                    "{}: credential `{}` is listed twice",
                    at(),
                    c.id
                )));
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// One identity from the file, checked and converted.
fn identity(
    name: &ProviderName,
    r: RawIdentity,
    anchor: DateTime<Utc>,
    err: &impl Fn(String) -> InventoryError,
) -> Result<Identity, InventoryError> {
    // Named in errors only: built when one is.
    let at = || format!("identity {}", quote_input(&r.native_id));
    let id = IdentityId::new(name, &r.native_id).map_err(|e| err(format!("{}: {}", at(), e.0)))?;
    let time = |key: &str, raw: &str| {
        parse_time(raw, anchor).map_err(|m| err(format!("{}: `{key}`: {m}", at())))
    };
    let mut credentials = Vec::with_capacity(r.credentials.len());
    for c in &r.credentials {
        credentials.push(Credential {
            id: CredentialId::parse(&c.id).map_err(|e| err(format!("{}: {}", at(), e.0)))?,
            kind: c.kind,
            created_at: time("credentials.created_at", &c.created_at)?,
            last_used_at: c
                .last_used_at
                .as_deref()
                .map(|t| time("credentials.last_used_at", t))
                .transpose()?,
            expires_at: c
                .expires_at
                .as_deref()
                .map(|t| time("credentials.expires_at", t))
                .transpose()?,
            status: c.status,
        });
    }
    let created_at = time("created_at", &r.created_at)?;
    let last_used_at = r
        .last_used_at
        .as_deref()
        .map(|t| time("last_used_at", t))
        .transpose()?;
    let wildcard = r
        .permissions
        .wildcard
        .unwrap_or_else(|| r.permissions.grants.iter().any(|g| g.contains('*')));
    Ok(Identity {
        provider: name.to_string(),
        native_id: r.native_id,
        kind: r.kind,
        name: r.name,
        owner: r.owner.filter(|o| !o.trim().is_empty()),
        purpose: r.purpose,
        environment: r.environment,
        used_in_environments: r.used_in_environments,
        tags: r.tags.into(),
        created_at,
        last_used_at,
        disabled: false,
        credentials,
        permissions: Permissions {
            privileged: r.permissions.privileged,
            wildcard,
            summary: r.permissions.summary,
            grants: r.permissions.grants,
        },
        id,
    })
}

/// Parses a time from the file: RFC 3339, or `+`/`-` digits and `d` or `h` relative to `anchor`.
/// Never panics: a unit that is not ASCII, a number that overflows, or a result outside the
/// calendar is an error, not a slice or an addition that fails.
pub fn parse_time(raw: &str, anchor: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let relative = |sign: i64, rest: &str| -> Option<Option<DateTime<Utc>>> {
        let unit = rest.chars().last()?;
        let digits = &rest[..rest.len() - unit.len_utf8()];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Only digits: a number that does not parse is too large.
        let n = digits.parse::<i64>().ok().map(|n| sign * n);
        let delta = match unit {
            'd' => n.and_then(TimeDelta::try_days),
            'h' => n.and_then(TimeDelta::try_hours),
            _ => return None,
        };
        // Well-formed: `Some`; in range: `Some(Some(_))`.
        Some(delta.and_then(|d| anchor.checked_add_signed(d)))
    };
    let parsed = if let Some(rest) = raw.strip_prefix('-') {
        relative(-1, rest)
    } else if let Some(rest) = raw.strip_prefix('+') {
        relative(1, rest)
    } else {
        Some(
            DateTime::parse_from_rfc3339(raw)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        )
        .filter(Option::is_some)
    };
    match parsed {
        Some(Some(t)) => Ok(t),
        Some(None) => Err(format!("{} is out of range", quote_input(raw))),
        None => Err(format!(
            "{} is neither an RFC 3339 time nor relative like `-30d`, `+7d`, `-6h`",
            quote_input(raw)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> ProviderName {
        ProviderName::parse("t").unwrap()
    }

    #[test]
    fn the_bundled_demo_inventories_parse() {
        let mut total = 0;
        for (key, text) in crate::config::DEMO_INVENTORIES {
            let n = ProviderName::parse(key).unwrap();
            total += parse_inventory(&n, text, key, false).unwrap().len();
        }
        assert!(total >= 40, "only {total} demo identities");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let text = "[[identities]]\nnative_id = \"a\"\nkind = \"service_user\"\nname = \"a\"\ncreated_at = \"-1d\"\ncolour = \"red\"\n[identities.permissions]\n";
        let e = parse_inventory(&name(), text, "inv.toml", false)
            .unwrap_err()
            .message;
        assert!(
            e.contains("inv.toml") && e.contains("line 6") && e.contains("colour"),
            "{e}"
        );

        let text = "[[identities]]\nnative_id = \"a\"\nkind = \"service_user\"\nname = \"a\"\ncreated_at = \"yesterday\"\n[identities.permissions]\n";
        let e = parse_inventory(&name(), text, "inv.toml", false)
            .unwrap_err()
            .message;
        assert!(e.contains("created_at") && e.contains("yesterday"), "{e}");

        let e = parse_inventory(&name(), "{\"identities\": [}", "inv.json", true)
            .unwrap_err()
            .message;
        assert!(e.contains("inv.json") && e.contains("line 1"), "{e}");
    }

    /// Issue 9 reads a file one identity at a time: the file-level checks are still made, and
    /// an identity refused in the middle of a file is the error, not the reader's stop.
    #[test]
    fn a_file_read_identity_by_identity_is_checked_as_a_whole() {
        let one = |id: &str, key: &str| {
            format!(
                r#"{{"native_id": "{id}", "kind": "service_user", "name": "n", "created_at": "-1d", "permissions": {{}}, "credentials": [{{"id": "{key}", "kind": "access_key", "created_at": "-1d", "status": "active"}}]}}"#
            )
        };
        let file = |items: &[String]| format!(r#"{{"identities": [{}]}}"#, items.join(","));
        let parse = |text: &str| parse_inventory(&name(), text, "inv.json", true);

        let ok = parse(&file(&[one("b", "K2"), one("a", "K1")])).expect("parses");
        let ids: Vec<&str> = ok.iter().map(|i| i.native_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(parse("{}").expect("no identities").is_empty());

        let e = parse(&file(&[one("a", "K1"), one("b", "K2"), one("a", "K3")]))
            .unwrap_err()
            .message;
        assert!(
            e.contains("identity `a`") && e.contains("used twice"),
            "{e}"
        );
        let e = parse(&file(&[one("a", "K1"), one("b", "K1")]))
            .unwrap_err()
            .message;
        assert!(
            e.contains("identity `b`") && e.contains("`K1` is listed twice"),
            "{e}"
        );
        let e = parse(&file(&[one("a", "K1"), one("b", "-K 2"), one("c", "K3")]))
            .unwrap_err()
            .message;
        assert!(e.contains("identity `b`") && e.contains("space"), "{e}");
        assert!(!e.contains("refused"), "{e}");
        let e = parse(r#"{"identities": [], "extra": 1}"#)
            .unwrap_err()
            .message;
        assert!(e.contains("unknown field `extra`"), "{e}");
        let e = parse(r#"{"identities": [], "identities": []}"#)
            .unwrap_err()
            .message;
        assert!(e.contains("duplicate field `identities`"), "{e}");
        let e = parse(r#"{"identities": []} trailing"#).unwrap_err().message;
        assert!(e.contains("trailing"), "{e}");
        let e = parse_inventory(&name(), "\n\ncolour = 1\n", "inv.toml", false)
            .unwrap_err()
            .message;
        assert!(e.contains("line 3") && e.contains("colour"), "{e}");
    }

    /// Every string field of one identity, by its path in the document.
    const FIELDS: [&[&str]; 14] = [
        &["native_id"],
        &["kind"],
        &["name"],
        &["owner"],
        &["environment"],
        &["created_at"],
        &["last_used_at"],
        &["permissions", "summary"],
        &["tags", "team"],
        &["credentials", "0", "id"],
        &["credentials", "0", "kind"],
        &["credentials", "0", "created_at"],
        &["credentials", "0", "expires_at"],
        &["credentials", "0", "status"],
    ];

    fn check_error(e: &InventoryError) -> Result<(), proptest::test_runner::TestCaseError> {
        proptest::prop_assert!(
            !e.message.contains(['\n', '\r', '\u{2028}', '\u{2029}']),
            "{}",
            e.message
        );
        proptest::prop_assert!(e.message.chars().count() <= MAX_MESSAGE_CHARS + 1);
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(768))]

        /// Issue 8: `created_at = "-5€"` and `"+999999999d"` panicked the process at start.
        #[test]
        fn hostile_values_in_any_field_are_errors_not_panics(
            value in crate::model::hostile::text(),
            field in 0..FIELDS.len(),
            json in proptest::bool::ANY,
        ) {
            let mut identity = serde_json::json!({
                "native_id": "a", "kind": "service_user", "name": "a", "owner": "o",
                "environment": "prod", "created_at": "-1d", "last_used_at": "-6h",
                "tags": {"team": "t"},
                "permissions": {"summary": "s", "grants": ["x"]},
                "credentials": [{"id": "c", "kind": "access_key", "created_at": "-1d",
                    "expires_at": "+7d", "status": "active"}],
            });
            let mut slot = &mut identity;
            for key in FIELDS[field] {
                slot = match key.parse::<usize>() {
                    Ok(i) => &mut slot[i],
                    Err(_) => &mut slot[*key],
                };
            }
            *slot = serde_json::Value::String(value);
            let doc = serde_json::json!({"identities": [identity]});
            let text = if json {
                doc.to_string()
            } else {
                toml::to_string(&doc).expect("toml")
            };
            if let Err(e) = parse_inventory(&name(), &text, "inv", json) {
                check_error(&e)?;
            }
        }

        #[test]
        fn hostile_text_spliced_into_a_file_is_an_error_not_a_panic(
            insert in crate::model::hostile::text(),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            json in proptest::bool::ANY,
        ) {
            let base = if json {
                r#"{"identities": [{"native_id": "a", "kind": "role", "name": "a", "created_at": "-5d", "permissions": {}}]}"#
            } else {
                crate::config::DEMO_INVENTORIES[0].1
            };
            let boundaries: Vec<usize> = base.char_indices().map(|(i, _)| i).collect();
            let cut = boundaries[at.index(boundaries.len())];
            let text = format!("{}{insert}{}", &base[..cut], &base[cut..]);
            if let Err(e) = parse_inventory(&name(), &text, "inv", json) {
                check_error(&e)?;
            }
        }

        #[test]
        fn times_parse_or_fail_at_any_anchor(raw in crate::model::hostile::text()) {
            for anchor in [DateTime::<Utc>::MIN_UTC, Utc::now(), DateTime::<Utc>::MAX_UTC] {
                if let Err(m) = parse_time(&raw, anchor) {
                    proptest::prop_assert!(!m.contains('\n'), "{m}");
                }
            }
        }
    }

    #[test]
    fn the_shapes_that_panicked_are_errors_naming_the_field() {
        for (raw, expect) in [
            ("-5€", "neither"),
            ("+999999999d", "out of range"),
            ("-9223372036854775807h", "out of range"),
            ("+99999999999999999999999d", "out of range"),
            ("+€", "neither"),
            ("--5d", "neither"),
        ] {
            let text = format!(
                "[[identities]]\nnative_id = \"a\"\nkind = \"role\"\nname = \"a\"\ncreated_at = \"{raw}\"\n[identities.permissions]\n"
            );
            let e = parse_inventory(&name(), &text, "inv.toml", false)
                .unwrap_err()
                .message;
            assert!(
                e.contains("`created_at`") && e.contains(expect),
                "{raw}: {e}"
            );
        }
        assert!(parse_time("+3d", Utc::now()).is_ok());
    }
}
