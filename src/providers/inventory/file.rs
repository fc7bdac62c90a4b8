//! The inventory file format (TOML, or JSON for a `.json` file); `examples/inventory/README.md`
//! documents it. Times are RFC 3339 or relative to today's UTC midnight (`-30d`, `+7d`, `-6h`),
//! so that a demo inventory does not age.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, NaiveTime, Utc};
use serde::Deserialize;

use crate::model::{
    Credential, CredentialId, CredentialKind, CredentialStatus, Identity, IdentityId, IdentityKind,
    Permissions, ProviderName, quote_input,
};

/// A malformed inventory; the message names the file, and the line and key where it can.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InventoryError {
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default)]
    identities: Vec<RawIdentity>,
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

/// Parses an inventory for provider `name`; `origin` names the file in errors.
pub fn parse_inventory(
    name: &ProviderName,
    text: &str,
    origin: &str,
    json: bool,
) -> Result<Vec<Identity>, InventoryError> {
    let err = |message: String| InventoryError {
        message: format!("inventory {origin}: {message}"),
    };
    let raw: RawInventory = if json {
        serde_json::from_str(text).map_err(|e| err(format!("line {}: {e}", e.line())))?
    } else {
        toml::from_str(text).map_err(|e| err(crate::config::toml_error_line(text, &e)))?
    };
    let anchor = Utc::now().date_naive().and_time(NaiveTime::MIN).and_utc();
    let mut seen_ids = BTreeSet::new();
    let mut seen_creds = BTreeSet::new();
    let mut out = Vec::with_capacity(raw.identities.len());
    for r in raw.identities {
        let at = format!("identity {}", quote_input(&r.native_id));
        let id = IdentityId::new(name, &r.native_id).map_err(|e| err(format!("{at}: {}", e.0)))?;
        if !seen_ids.insert(id.clone()) {
            return Err(err(format!("{at}: `native_id` is used twice")));
        }
        let time = |key: &str, raw: &str| {
            parse_time(raw, anchor).map_err(|m| err(format!("{at}: `{key}`: {m}")))
        };
        let mut credentials = Vec::with_capacity(r.credentials.len());
        for c in r.credentials {
            let cid = CredentialId::parse(&c.id).map_err(|e| err(format!("{at}: {}", e.0)))?;
            if !seen_creds.insert(cid.clone()) {
                return Err(err(format!("{at}: credential `{cid}` is listed twice")));
            }
            credentials.push(Credential {
                id: cid,
                kind: c.kind,
                created_at: time("credentials.created_at", &c.created_at)?,
                last_used_at: c
                    .last_used_at
                    .map(|t| time("credentials.last_used_at", &t))
                    .transpose()?,
                expires_at: c
                    .expires_at
                    .map(|t| time("credentials.expires_at", &t))
                    .transpose()?,
                status: c.status,
            });
        }
        let wildcard = r
            .permissions
            .wildcard
            .unwrap_or_else(|| r.permissions.grants.iter().any(|g| g.contains('*')));
        out.push(Identity {
            provider: name.to_string(),
            native_id: r.native_id,
            kind: r.kind,
            name: r.name,
            owner: r.owner.filter(|o| !o.trim().is_empty()),
            purpose: r.purpose,
            environment: r.environment,
            used_in_environments: r.used_in_environments,
            tags: r.tags,
            created_at: time("created_at", &r.created_at)?,
            last_used_at: r
                .last_used_at
                .map(|t| time("last_used_at", &t))
                .transpose()?,
            disabled: false,
            credentials,
            permissions: Permissions {
                privileged: r.permissions.privileged,
                wildcard,
                summary: r.permissions.summary,
                grants: r.permissions.grants,
            },
            id,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn parse_time(raw: &str, anchor: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let relative = |sign: i64, rest: &str| -> Option<DateTime<Utc>> {
        let (n, unit) = rest.split_at(rest.len().checked_sub(1)?);
        let n: i64 = n.parse().ok()?;
        match unit {
            "d" => Some(anchor + Duration::days(sign * n)),
            "h" => Some(anchor + Duration::hours(sign * n)),
            _ => None,
        }
    };
    let parsed = if let Some(rest) = raw.strip_prefix('-') {
        relative(-1, rest)
    } else if let Some(rest) = raw.strip_prefix('+') {
        relative(1, rest)
    } else {
        DateTime::parse_from_rfc3339(raw)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    parsed.ok_or_else(|| {
        format!(
            "{} is neither an RFC 3339 time nor relative like `-30d`, `+7d`, `-6h`",
            quote_input(raw)
        )
    })
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
}
