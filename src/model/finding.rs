//! Posture findings computed from identity data, each with its OWASP NHI Top 10 id, the
//! threshold used and the evidence.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::identity::{CredentialKind, Identity};
use super::ids::{CredentialId, IdentityId};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FindingRule {
    /// Not used for longer than the threshold, or never used.
    Unused,
    /// An active credential older than the rotation maximum.
    CredentialTooOld,
    /// An active long-lived credential with no expiry.
    NoExpiry,
    /// Privileged or wildcard permissions.
    Privileged,
    /// Nobody owns the identity.
    NoOwner,
    /// More than one active credential.
    MultipleActiveCredentials,
    /// Used from more than one environment.
    CrossEnvironment,
}

impl FindingRule {
    pub const ALL: [FindingRule; 7] = [
        Self::Unused,
        Self::CredentialTooOld,
        Self::NoExpiry,
        Self::Privileged,
        Self::NoOwner,
        Self::MultipleActiveCredentials,
        Self::CrossEnvironment,
    ];

    /// The OWASP Non-Human Identities Top 10 (2025) entry the rule belongs to.
    pub fn owasp_id(self) -> &'static str {
        match self {
            Self::Unused | Self::NoOwner => "NHI1",
            Self::Privileged => "NHI5",
            Self::CredentialTooOld | Self::NoExpiry | Self::MultipleActiveCredentials => "NHI7",
            Self::CrossEnvironment => "NHI8",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Self::Unused => "unused",
            Self::CredentialTooOld => "credential_too_old",
            Self::NoExpiry => "no_expiry",
            Self::Privileged => "privileged",
            Self::NoOwner => "no_owner",
            Self::MultipleActiveCredentials => "multiple_active_credentials",
            Self::CrossEnvironment => "cross_environment",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Unused => "identity unused past the threshold (improper offboarding)",
            Self::CredentialTooOld => {
                "credential older than the rotation maximum (long-lived secret)"
            }
            Self::NoExpiry => "long-lived credential with no expiry",
            Self::Privileged => "privileged or wildcard permissions (overprivileged NHI)",
            Self::NoOwner => "identity has no owner",
            Self::MultipleActiveCredentials => "more than one active credential",
            Self::CrossEnvironment => {
                "identity used in more than one environment (environment isolation)"
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Finding {
    /// Stable id: `<rule>:<identity id>[:<credential id>]`.
    pub id: String,
    pub rule: FindingRule,
    pub owasp_id: String,
    pub severity: Severity,
    pub identity_id: IdentityId,
    pub credential_id: Option<CredentialId>,
    pub title: String,
    pub evidence: String,
    /// The threshold the rule used, when it has one.
    pub threshold: Option<String>,
}

/// Rule thresholds, from config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Thresholds {
    pub unused_days: u32,
    pub max_credential_age_days: u32,
}

impl Thresholds {
    /// The loosest value each threshold may take before the looseness is itself reported.
    pub const FLOOR_DAYS: u32 = 365;

    /// Warnings for thresholds loosened past their floor.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, value) in [
            ("findings.unused_days", self.unused_days),
            (
                "findings.max_credential_age_days",
                self.max_credential_age_days,
            ),
        ] {
            if value > Self::FLOOR_DAYS {
                out.push(format!(
                    "`{key}` = {value} is looser than the {}-day floor: findings will be missed",
                    Self::FLOOR_DAYS
                ));
            }
        }
        out
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            unused_days: 90,
            max_credential_age_days: 90,
        }
    }
}

fn days_between(earlier: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    (now - earlier).num_days()
}

/// Every finding for `identity` at `now`, in a stable order.
pub fn evaluate(identity: &Identity, thresholds: &Thresholds, now: DateTime<Utc>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut push = |rule: FindingRule,
                    severity: Severity,
                    credential: Option<&CredentialId>,
                    evidence: String,
                    threshold: Option<String>| {
        let mut id = format!("{}:{}", rule.slug(), identity.id);
        if let Some(c) = credential {
            id.push(':');
            id.push_str(c.as_str());
        }
        out.push(Finding {
            id,
            rule,
            owasp_id: rule.owasp_id().to_owned(),
            severity,
            identity_id: identity.id.clone(),
            credential_id: credential.cloned(),
            title: rule.title().to_owned(),
            evidence,
            threshold,
        });
    };
    let privileged = identity.permissions.privileged || identity.permissions.wildcard;
    let raise = |s: Severity| if privileged { s.max(Severity::High) } else { s };

    if !identity.disabled {
        let unused = format!("{} days", thresholds.unused_days);
        match identity.last_activity() {
            None => {
                let age = days_between(identity.created_at, now);
                if age > i64::from(thresholds.unused_days) {
                    push(
                        FindingRule::Unused,
                        raise(Severity::Medium),
                        None,
                        format!("never used since it was created {age} days ago"),
                        Some(unused),
                    );
                }
            }
            Some(last) => {
                let idle = days_between(last, now);
                if idle > i64::from(thresholds.unused_days) {
                    push(
                        FindingRule::Unused,
                        raise(Severity::Medium),
                        None,
                        format!("last used {idle} days ago"),
                        Some(unused),
                    );
                }
            }
        }
    }

    for credential in identity.active_credentials() {
        let age = days_between(credential.created_at, now);
        if age > i64::from(thresholds.max_credential_age_days) {
            push(
                FindingRule::CredentialTooOld,
                raise(Severity::Medium),
                Some(&credential.id),
                format!("{} created {age} days ago", credential.kind.as_str()),
                Some(format!("{} days", thresholds.max_credential_age_days)),
            );
        }
        let long_lived = credential.kind != CredentialKind::Certificate;
        if long_lived && credential.expires_at.is_none() {
            push(
                FindingRule::NoExpiry,
                Severity::Low,
                Some(&credential.id),
                "active credential has no expiry date".to_owned(),
                Some("an expiry is required".to_owned()),
            );
        }
    }

    if privileged {
        let what = match (
            identity.permissions.privileged,
            identity.permissions.wildcard,
        ) {
            (true, true) => "privileged and wildcard grants",
            (true, false) => "privileged grants",
            _ => "wildcard grants",
        };
        push(
            FindingRule::Privileged,
            Severity::High,
            None,
            format!("{what}: {}", identity.permissions.summary),
            None,
        );
    }

    if identity
        .owner
        .as_deref()
        .is_none_or(|o| o.trim().is_empty())
    {
        push(
            FindingRule::NoOwner,
            raise(Severity::Medium),
            None,
            "no owner is recorded".to_owned(),
            None,
        );
    }

    let active = identity.active_credentials().count();
    if active > 1 {
        push(
            FindingRule::MultipleActiveCredentials,
            Severity::Medium,
            None,
            format!("{active} active credentials"),
            Some("at most 1 active credential".to_owned()),
        );
    }

    let mut envs = identity.used_in_environments.clone();
    envs.sort();
    envs.dedup();
    if envs.len() > 1 {
        push(
            FindingRule::CrossEnvironment,
            raise(Severity::Medium),
            None,
            format!("used from {}", envs.join(", ")),
            Some("one environment per identity".to_owned()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ids::CredentialId;
    use chrono::Duration;

    fn identity(now: DateTime<Utc>) -> Identity {
        crate::model::identity::sample(now)
    }

    fn rules(identity: &Identity, now: DateTime<Utc>) -> Vec<FindingRule> {
        evaluate(identity, &Thresholds::default(), now)
            .into_iter()
            .map(|f| f.rule)
            .collect()
    }

    #[test]
    fn healthy_identity_has_no_findings() {
        let now = Utc::now();
        assert_eq!(rules(&identity(now), now), vec![]);
    }

    #[test]
    fn each_rule_fires_on_its_case() {
        let now = Utc::now();
        let check = |mutate: &dyn Fn(&mut Identity), expected: FindingRule| {
            let mut i = identity(now);
            mutate(&mut i);
            assert!(
                rules(&i, now).contains(&expected),
                "{expected:?} not raised"
            );
        };
        check(
            &|i| i.last_used_at = Some(now - Duration::days(91)),
            FindingRule::Unused,
        );
        check(
            &|i| {
                i.last_used_at = None;
                i.created_at = now - Duration::days(200);
            },
            FindingRule::Unused,
        );
        check(
            &|i| i.credentials[0].created_at = now - Duration::days(91),
            FindingRule::CredentialTooOld,
        );
        check(
            &|i| i.credentials[0].expires_at = None,
            FindingRule::NoExpiry,
        );
        check(&|i| i.permissions.wildcard = true, FindingRule::Privileged);
        check(&|i| i.owner = None, FindingRule::NoOwner);
        check(
            &|i| {
                let mut c = i.credentials[0].clone();
                c.id = CredentialId::parse("k2").unwrap();
                i.credentials.push(c);
            },
            FindingRule::MultipleActiveCredentials,
        );
        check(
            &|i| i.used_in_environments.push("dev".into()),
            FindingRule::CrossEnvironment,
        );
    }

    #[test]
    fn thresholds_are_respected_and_loosening_is_reported() {
        let now = Utc::now();
        let mut i = identity(now);
        i.last_used_at = Some(now - Duration::days(100));
        let loose = Thresholds {
            unused_days: 400,
            max_credential_age_days: 90,
        };
        assert!(evaluate(&i, &loose, now).is_empty());
        assert_eq!(loose.warnings().len(), 1);
        assert!(Thresholds::default().warnings().is_empty());
    }
}
