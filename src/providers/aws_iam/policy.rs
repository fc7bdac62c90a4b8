//! Policy-document analysis: which policies apply to an identity, whether they make it
//! privileged (`*` actions or resources), and who may assume a role.

use super::read::Details;
use super::*;

/// Inline policies as (label, parsed document).
pub(super) fn documents(
    list: &[aws_sdk_iam::types::PolicyDetail],
) -> Vec<(String, Option<serde_json::Value>)> {
    list.iter()
        .map(|p| {
            (
                format!("inline policy {}", p.policy_name().unwrap_or("?")),
                p.policy_document().and_then(parse_document),
            )
        })
        .collect()
}

/// The policies that apply to one identity, with their documents where known.
#[derive(Default)]
pub(super) struct Sources {
    pub(super) grants: Vec<String>,
    pub(super) privileged: bool,
    pub(super) wildcard: bool,
}

impl Sources {
    pub(super) fn managed(&mut self, arn: Option<&str>, details: &Details) {
        if let Some(arn) = arn {
            self.managed_labeled(arn, policy_label(arn), details);
        }
    }

    pub(super) fn managed_via(&mut self, arn: &str, group: &str, details: &Details) {
        self.managed_labeled(
            arn,
            format!("{} (via group {group})", policy_label(arn)),
            details,
        );
    }

    pub(super) fn managed_labeled(&mut self, arn: &str, label: String, details: &Details) {
        let name = arn.rsplit('/').next().unwrap_or(arn);
        if arn.starts_with("arn:aws:iam::aws:policy/") && ADMIN_POLICIES.contains(&name) {
            self.privileged = true;
            self.wildcard |= name == "AdministratorAccess";
        }
        self.add(label, details.managed_docs.get(arn).cloned());
    }

    pub(super) fn inline(&mut self, list: &[aws_sdk_iam::types::PolicyDetail]) {
        for (label, doc) in documents(list) {
            self.add(label, doc);
        }
    }

    pub(super) fn add(&mut self, label: String, doc: Option<serde_json::Value>) {
        if let Some(doc) = doc {
            let w = wildcards(&doc);
            if w.action || w.resource {
                self.privileged = true;
                self.wildcard = true;
            }
            let mut notes = Vec::new();
            if w.action {
                notes.push("* actions");
            }
            if w.resource {
                notes.push("* resources");
            }
            if notes.is_empty() {
                self.grants.push(label);
            } else {
                self.grants.push(format!("{label} ({})", notes.join(", ")));
            }
        } else {
            self.grants.push(label);
        }
    }

    pub(super) fn summary(mut self) -> Permissions {
        self.grants.sort();
        self.grants.dedup();
        let summary = if self.grants.is_empty() {
            "no policies".to_owned()
        } else {
            self.grants.join(", ")
        };
        Permissions {
            privileged: self.privileged,
            wildcard: self.wildcard,
            summary,
            grants: self.grants,
        }
    }
}

pub(super) fn policy_label(arn: &str) -> String {
    let name = arn.rsplit('/').next().unwrap_or(arn);
    if arn.starts_with("arn:aws:iam::aws:policy/") {
        format!("AWS managed policy {name}")
    } else {
        format!("managed policy {name}")
    }
}

pub(super) struct Wildcards {
    pub(super) action: bool,
    pub(super) resource: bool,
}

/// Whether a policy document allows `*` actions (`*`, `service:*`, or `NotAction`) or `*`
/// resources (`*` or `NotResource`).
pub(super) fn wildcards(doc: &serde_json::Value) -> Wildcards {
    let statements: Vec<&serde_json::Value> = match doc.get("Statement") {
        Some(serde_json::Value::Array(a)) => a.iter().collect(),
        Some(s @ serde_json::Value::Object(_)) => vec![s],
        _ => Vec::new(),
    };
    let mut w = Wildcards {
        action: false,
        resource: false,
    };
    for s in statements {
        if s.get("Effect").and_then(|e| e.as_str()) != Some("Allow") {
            continue;
        }
        let strings = |key: &str| -> Vec<String> {
            match s.get(key) {
                Some(serde_json::Value::String(v)) => vec![v.clone()],
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            }
        };
        if s.get("NotAction").is_some()
            || strings("Action")
                .iter()
                .any(|a| a == "*" || a.ends_with(":*"))
        {
            w.action = true;
        }
        if s.get("NotResource").is_some() || strings("Resource").iter().any(|r| r == "*") {
            w.resource = true;
        }
    }
    w
}

/// Who may assume a role: `service ec2.amazonaws.com`, `federated <provider>`, `account <arn>`,
/// or `anyone (*)`.
pub(super) fn trust_principals(doc: &serde_json::Value) -> Vec<String> {
    let statements: Vec<&serde_json::Value> = match doc.get("Statement") {
        Some(serde_json::Value::Array(a)) => a.iter().collect(),
        Some(s @ serde_json::Value::Object(_)) => vec![s],
        _ => Vec::new(),
    };
    let mut out = BTreeSet::new();
    for s in statements {
        if s.get("Effect").and_then(|e| e.as_str()) != Some("Allow") {
            continue;
        }
        match s.get("Principal") {
            Some(serde_json::Value::String(p)) if p == "*" => {
                out.insert("anyone (*)".to_owned());
            }
            Some(serde_json::Value::Object(m)) => {
                for (kind, v) in m {
                    let label = match kind.as_str() {
                        "Service" => "service",
                        "Federated" => "federated",
                        "AWS" => "account",
                        other => other,
                    };
                    let values: Vec<&str> = match v {
                        serde_json::Value::String(s) => vec![s.as_str()],
                        serde_json::Value::Array(a) => {
                            a.iter().filter_map(|x| x.as_str()).collect()
                        }
                        _ => Vec::new(),
                    };
                    for value in values {
                        if value == "*" {
                            out.insert("anyone (*)".to_owned());
                        } else {
                            out.insert(format!("{label} {value}"));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out.into_iter().collect()
}

/// IAM returns policy documents URL-encoded (RFC 3986); emulators sometimes do not.
pub(super) fn parse_document(raw: &str) -> Option<serde_json::Value> {
    serde_json::from_str(raw).ok().or_else(|| {
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .ok()?;
        serde_json::from_str(&decoded).ok()
    })
}
