//! The `postgres` provider: login roles of one PostgreSQL cluster.
//!
//! - Listing reads `pg_roles`: login roles (and roles nhi-mcp left without login), with
//!   `rolvaliduntil` as the password's expiry, superuser / createrole / replication / bypassrls
//!   and membership in administrative roles as privileged, the role comment as owner, purpose,
//!   environment and tags (`owner=team-x; purpose=...; environment=prod; key=value`), and live
//!   sessions from `pg_stat_activity`. PostgreSQL records neither when a role was made nor when
//!   it last logged in: the last use is the newest live session, and the `unused` finding does
//!   not apply.
//! - Rotation sets a generated password with `ALTER ROLE … PASSWORD`, sent as a SCRAM-SHA-256
//!   verifier so the password itself never reaches the server's statement log. Sessions opened
//!   with the old password survive a password change; terminating them is the plan's second
//!   step, after the grace period.
//! - Revocation is `NOLOGIN` plus terminating the role's sessions; the role itself is kept.
//! - Role names are always quoted as identifiers; values are bound as parameters.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Row};

use super::{Provider, ProviderError, StepResult};
use crate::model::proposal::BlastRadius;
use crate::model::{
    Credential, CredentialId, CredentialKind, CredentialStatus, Identity, IdentityId, IdentityKind,
    Permissions, PlanStep, ProviderName, Secret, StepAction,
};
use crate::ports::ApprovedPlan;

/// Built-in roles whose members can read or change everything, or run code on the server.
const ADMIN_ROLES: [&str; 6] = [
    "pg_read_all_data",
    "pg_write_all_data",
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_signal_backend",
];

/// The one credential of a login role.
const PASSWORD: &str = "password";

pub struct PostgresProvider {
    name: ProviderName,
    pool: PgPool,
    /// The role nhi-mcp connects as: changing it would lock nhi-mcp out.
    own_role: String,
}

impl PostgresProvider {
    /// Prepares a pool for `url`; nothing connects until the first call.
    pub fn connect_lazy(name: ProviderName, url: &Secret) -> Result<Self, ProviderError> {
        let options: PgConnectOptions =
            url.expose().parse().map_err(|_| ProviderError::Refused {
                provider: name.to_string(),
                // The URL holds a password: never echo it.
                message: "the database URL is not a valid postgres:// URL".to_owned(),
            })?;
        let own_role = options.get_username().to_owned();
        let options = options.log_statements(tracing::log::LevelFilter::Off);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        Ok(Self {
            name,
            pool,
            own_role,
        })
    }

    /// Refuses changes to the role nhi-mcp itself connects as.
    fn refuse_own_role(&self, identity: &Identity) -> Result<(), ProviderError> {
        if identity.name == self.own_role {
            return Err(ProviderError::Refused {
                provider: self.name.to_string(),
                message: format!(
                    "{} is the role nhi-mcp connects as; changing it would lock nhi-mcp out (rotate it by hand and update the URL)",
                    quote_ident(&identity.name)
                ),
            });
        }
        Ok(())
    }

    fn err(&self, e: sqlx::Error) -> ProviderError {
        let message = match &e {
            sqlx::Error::Database(db) => db.message().to_owned(),
            sqlx::Error::PoolTimedOut => "no connection within 10s".to_owned(),
            sqlx::Error::Io(io) => format!("connection failed: {io}"),
            sqlx::Error::Tls(_) => "TLS failed".to_owned(),
            _ => "database error".to_owned(),
        };
        match e {
            sqlx::Error::Database(_) => ProviderError::Refused {
                provider: self.name.to_string(),
                message,
            },
            _ => ProviderError::Unavailable {
                provider: self.name.to_string(),
                message,
            },
        }
    }

    async fn roles(&self, only: Option<&str>) -> Result<Vec<Identity>, ProviderError> {
        let rows = sqlx::query(
            "SELECT r.rolname, r.rolcanlogin, r.rolvaliduntil, r.rolsuper, r.rolcreaterole,
                    r.rolreplication, r.rolbypassrls,
                    shobj_description(r.oid, 'pg_authid') AS comment,
                    ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                          WHERE m.member = r.oid ORDER BY 1) AS member_of,
                    ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                          WHERE m.member = r.oid AND (g.rolsuper OR g.rolcreaterole)) AS admin_groups,
                    (SELECT max(a.backend_start) FROM pg_stat_activity a
                      WHERE a.usename = r.rolname AND a.backend_type = 'client backend') AS last_seen
             FROM pg_roles r
             WHERE r.rolname NOT LIKE 'pg\\_%'
               AND (r.rolcanlogin OR NOT EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.roleid = r.oid))
               AND ($1::text IS NULL OR r.rolname = $1)
             ORDER BY r.rolname",
        )
        .bind(only)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let now = Utc::now();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let get = |e: sqlx::Error| self.err(e);
            let rolname: String = row.try_get("rolname").map_err(get)?;
            let can_login: bool = row.try_get("rolcanlogin").map_err(get)?;
            let valid_until: Option<DateTime<Utc>> = row.try_get("rolvaliduntil").map_err(get)?;
            let superuser: bool = row.try_get("rolsuper").map_err(get)?;
            let createrole: bool = row.try_get("rolcreaterole").map_err(get)?;
            let replication: bool = row.try_get("rolreplication").map_err(get)?;
            let bypassrls: bool = row.try_get("rolbypassrls").map_err(get)?;
            let comment: Option<String> = row.try_get("comment").map_err(get)?;
            let member_of: Vec<String> = row.try_get("member_of").map_err(get)?;
            let admin_groups: Vec<String> = row.try_get("admin_groups").map_err(get)?;
            let last_seen: Option<DateTime<Utc>> = row.try_get("last_seen").map_err(get)?;

            let mut grants = Vec::new();
            for (flag, what) in [
                (superuser, "SUPERUSER"),
                (createrole, "CREATEROLE"),
                (replication, "REPLICATION"),
                (bypassrls, "BYPASSRLS"),
            ] {
                if flag {
                    grants.push(what.to_owned());
                }
            }
            grants.extend(member_of.iter().map(|g| format!("member of {g}")));
            let admin_member = member_of.iter().any(|g| ADMIN_ROLES.contains(&g.as_str()))
                || !admin_groups.is_empty();
            let privileged = superuser || createrole || replication || bypassrls || admin_member;
            let summary = if grants.is_empty() {
                "no role attributes or memberships".to_owned()
            } else {
                grants.join(", ")
            };
            let meta = parse_comment(comment.as_deref());
            let id = IdentityId::new(&self.name, &format!("role/{}", encode(&rolname))).map_err(
                |e| ProviderError::Refused {
                    provider: self.name.to_string(),
                    message: e.0,
                },
            )?;
            out.push(Identity {
                id,
                provider: self.name.to_string(),
                native_id: format!("role/{}", encode(&rolname)),
                kind: IdentityKind::DatabaseRole,
                name: rolname,
                owner: meta.owner,
                purpose: meta.purpose,
                environment: meta.environment,
                used_in_environments: Vec::new(),
                tags: meta.tags.into(),
                // Unknown to PostgreSQL; see the module docs.
                created_at: now,
                last_used_at: last_seen,
                disabled: !can_login,
                credentials: vec![Credential {
                    id: CredentialId::parse(PASSWORD).map_err(|e| ProviderError::Refused {
                        provider: self.name.to_string(),
                        message: e.0,
                    })?,
                    kind: CredentialKind::Password,
                    created_at: now,
                    last_used_at: last_seen,
                    expires_at: valid_until.filter(|t| t.timestamp() < 253_402_300_799),
                    status: if can_login {
                        CredentialStatus::Active
                    } else {
                        CredentialStatus::Inactive
                    },
                }],
                permissions: Permissions {
                    privileged,
                    wildcard: superuser,
                    summary,
                    grants,
                },
            });
        }
        Ok(out)
    }

    fn role_of(&self, id: &IdentityId) -> Result<String, ProviderError> {
        id.native()
            .strip_prefix("role/")
            .and_then(decode)
            .ok_or_else(|| ProviderError::Refused {
                provider: self.name.to_string(),
                message: format!("`{id}` is not a role of this provider"),
            })
    }

    async fn execute(&self, sql: &str) -> Result<(), ProviderError> {
        sqlx::query(sql)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn terminate(&self, role: &str) -> Result<u64, ProviderError> {
        let row = sqlx::query(
            // A superuser's session cannot be terminated by a non-superuser, and trying aborts
            // the whole statement: leave them out.
            "SELECT count(pg_terminate_backend(a.pid)) AS n FROM pg_stat_activity a
             JOIN pg_roles r ON r.rolname = a.usename
             WHERE a.usename = $1 AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
               AND NOT r.rolsuper",
        )
        .bind(role)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(u64::try_from(row.try_get::<i64, _>("n").map_err(|e| self.err(e))?).unwrap_or(0))
    }
}

#[async_trait]
impl Provider for PostgresProvider {
    fn name(&self) -> &ProviderName {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn list(&self) -> Result<Vec<Identity>, ProviderError> {
        let mut roles = self.roles(None).await?;
        roles.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(roles)
    }

    async fn get(&self, id: &IdentityId) -> Result<Option<Identity>, ProviderError> {
        let Some(role) = id.native().strip_prefix("role/").and_then(decode) else {
            return Ok(None);
        };
        Ok(self.roles(Some(&role)).await?.into_iter().next())
    }

    fn plan_rotation(
        &self,
        identity: &Identity,
        credential: &Credential,
        grace: Duration,
    ) -> Result<Vec<PlanStep>, ProviderError> {
        self.refuse_own_role(identity)?;
        if identity.disabled {
            return Err(ProviderError::Refused {
                provider: self.name.to_string(),
                message: format!(
                    "`{}` cannot log in; there is no password to rotate",
                    identity.id
                ),
            });
        }
        Ok(vec![
            PlanStep {
                index: 0,
                action: StepAction::SetPassword {
                    credential_id: credential.id.clone(),
                },
                description: format!(
                    "set a new generated password for role {} and deliver it to the secret sink (new logins need it at once; PostgreSQL keeps one password per role)",
                    quote_ident(&identity.name)
                ),
                after_grace: false,
            },
            PlanStep {
                index: 1,
                action: StepAction::TerminateSessions,
                description: format!(
                    "after a grace period of {}, terminate the sessions of {} opened with the old password",
                    humantime::format_duration(grace),
                    quote_ident(&identity.name)
                ),
                after_grace: true,
            },
        ])
    }

    fn plan_revocation(
        &self,
        identity: &Identity,
    ) -> Result<(Vec<PlanStep>, BlastRadius), ProviderError> {
        self.refuse_own_role(identity)?;
        if identity.disabled {
            return Err(ProviderError::Refused {
                provider: self.name.to_string(),
                message: format!("`{}` is already revoked (NOLOGIN)", identity.id),
            });
        }
        let steps = vec![
            PlanStep {
                index: 0,
                action: StepAction::DisableSignIn,
                description: format!(
                    "ALTER ROLE {} NOLOGIN (the role and its grants are kept)",
                    quote_ident(&identity.name)
                ),
                after_grace: false,
            },
            PlanStep {
                index: 1,
                action: StepAction::TerminateSessions,
                description: format!(
                    "terminate every live session of {}",
                    quote_ident(&identity.name)
                ),
                after_grace: false,
            },
        ];
        let blast = BlastRadius {
            credentials_deactivated: identity.credentials.iter().map(|c| c.id.clone()).collect(),
            sign_in_disabled: true,
            environments: identity.environment.iter().cloned().collect(),
            privileged: identity.permissions.privileged,
            last_used_at: identity.last_activity(),
            summary: format!(
                "role {} can no longer log in and its live sessions end ({})",
                quote_ident(&identity.name),
                identity.permissions.summary
            ),
        };
        Ok((steps, blast))
    }

    async fn apply_step(
        &self,
        plan: &ApprovedPlan,
        step: &PlanStep,
    ) -> Result<StepResult, ProviderError> {
        let role = self.role_of(plan.identity_id())?;
        match &step.action {
            StepAction::SetPassword { credential_id } => {
                let secret = generate_password();
                let verifier = scram_verifier(secret.expose());
                // A utility statement takes no bind parameters; the verifier is base64 and `$`,
                // `:` only, and is quoted as a literal all the same.
                self.execute(&format!(
                    "ALTER ROLE {} PASSWORD {}",
                    quote_ident(&role),
                    quote_literal(&verifier)
                ))
                .await?;
                Ok(StepResult::Created {
                    credential_id: credential_id.clone(),
                    secret,
                })
            }
            StepAction::TerminateSessions => {
                let n = self.terminate(&role).await?;
                Ok(StepResult::Done {
                    detail: format!("terminated {n} session(s) of {}", quote_ident(&role)),
                })
            }
            StepAction::DisableSignIn => {
                self.execute(&format!("ALTER ROLE {} NOLOGIN", quote_ident(&role)))
                    .await?;
                Ok(StepResult::Done {
                    detail: format!("role {} can no longer log in", quote_ident(&role)),
                })
            }
            StepAction::CreateCredential { .. }
            | StepAction::DeactivateCredential { .. }
            | StepAction::DeleteCredential { .. } => Err(ProviderError::Refused {
                provider: self.name.to_string(),
                message: "this step is not one the postgres provider plans".to_owned(),
            }),
        }
    }

    async fn capabilities(&self) -> Result<Vec<String>, ProviderError> {
        let row = sqlx::query(
            "SELECT r.rolsuper, r.rolcreaterole,
                    pg_has_role(r.oid, 'pg_signal_backend', 'USAGE') AS can_signal
             FROM pg_roles r WHERE r.rolname = current_user",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let get = |col: &str| row.try_get::<bool, _>(col).map_err(|e| self.err(e));
        let (superuser, createrole, can_signal) =
            (get("rolsuper")?, get("rolcreaterole")?, get("can_signal")?);
        let role = quote_ident(&self.own_role);
        let mut lines = vec![format!(
            "connects as role {role} (never changed by nhi-mcp)"
        )];
        lines.push(if superuser {
            format!("{role} is a superuser: it can rotate and revoke every role (a role with CREATEROLE is enough)")
        } else if createrole {
            format!("{role} has CREATEROLE: it can rotate and revoke roles that are not superusers")
        } else {
            format!("cannot rotate or revoke: {role} lacks CREATEROLE")
        });
        if !superuser && !can_signal {
            lines.push(format!(
                "cannot terminate other roles' sessions: {role} is not a member of pg_signal_backend"
            ));
        }
        Ok(lines)
    }

    async fn rollback_step(
        &self,
        _plan: &ApprovedPlan,
        _step: &PlanStep,
    ) -> Result<String, ProviderError> {
        // Setting a password again replaces whatever an interrupted run set; the other steps are
        // idempotent.
        Ok("nothing to undo: the step is run again".to_owned())
    }
}

/// `"name"` with inner quotes doubled: safe for any role name.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Role names in identity ids: ASCII letters, digits, `_`, `-` and `.` as they are, every other
/// byte `%XX`.
const ROLE_NAME_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'-')
    .remove(b'.');

fn encode(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, ROLE_NAME_ESCAPES).to_string()
}

/// The role name of an id's native part; `None` for malformed escapes or non-UTF-8 bytes.
fn decode(encoded: &str) -> Option<String> {
    // percent_decode passes a malformed `%` through as it is: such an id was never ours.
    let well_formed = encoded.match_indices('%').all(|(i, _)| {
        encoded
            .get(i + 1..i + 3)
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    if !well_formed {
        return None;
    }
    percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

struct CommentMeta {
    owner: Option<String>,
    purpose: Option<String>,
    environment: Option<String>,
    tags: std::collections::BTreeMap<String, String>,
}

/// `owner=team-x; purpose=orders; environment=prod; team=x`, or free text taken as the purpose.
fn parse_comment(comment: Option<&str>) -> CommentMeta {
    let mut meta = CommentMeta {
        owner: None,
        purpose: None,
        environment: None,
        tags: Default::default(),
    };
    let Some(comment) = comment.map(str::trim).filter(|c| !c.is_empty()) else {
        return meta;
    };
    if !comment.contains('=') {
        meta.purpose = Some(comment.to_owned());
        return meta;
    }
    for part in comment.split(';') {
        if let Some((k, v)) = part.split_once('=') {
            let (k, v) = (k.trim(), v.trim().to_owned());
            match k {
                "owner" => meta.owner = Some(v),
                "purpose" => meta.purpose = Some(v),
                "environment" | "env" => meta.environment = Some(v),
                _ => {
                    meta.tags.insert(k.to_owned(), v);
                }
            }
        }
    }
    meta
}

/// 32 random bytes, base64url: 256 bits, no quotes or backslashes.
fn generate_password() -> Secret {
    Secret::generate("")
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677), in its text
/// form `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as `postgres-protocol`
/// computes it (a fresh random salt each time).
fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_ids_round_trip() {
        for name in [
            "app_rw",
            "weird \"role\" name",
            "select",
            "naïve; DROP ROLE x; --",
        ] {
            assert_eq!(decode(&encode(name)).as_deref(), Some(name));
            assert!(!encode(name).contains(' '));
        }
        assert_eq!(encode("naïve x.y-z_1"), "na%C3%AFve%20x.y-z_1");
        for malformed in ["%zz", "%4", "a%", "%FF", "%C3"] {
            assert_eq!(decode(malformed), None, "{malformed}");
        }
        assert_eq!(quote_ident("weird \"role\""), "\"weird \"\"role\"\"\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn comments_give_owner_purpose_environment_and_tags() {
        let m = parse_comment(Some(
            "owner=team-payments; purpose=orders service; env=prod; tier=1",
        ));
        assert_eq!(m.owner.as_deref(), Some("team-payments"));
        assert_eq!(m.purpose.as_deref(), Some("orders service"));
        assert_eq!(m.environment.as_deref(), Some("prod"));
        assert_eq!(m.tags.get("tier").map(String::as_str), Some("1"));
        assert_eq!(
            parse_comment(Some("reporting")).purpose.as_deref(),
            Some("reporting")
        );
    }

    #[test]
    fn scram_verifier_has_postgres_form() {
        let v = scram_verifier("secret");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert!(!v.contains("secret") && !v.contains('\''));
        assert_eq!(v.matches('$').count(), 2);
    }
}
