//! Who is calling over HTTP: an OAuth 2.1 resource server. Bearer JWTs are validated against the
//! issuer's JWKS (fetched, cached, refreshed on an unknown `kid` at most once per
//! `JWKS_REFRESH_INTERVAL`), with an algorithm allow-list, `iss`, `aud` (this server's resource
//! URI, RFC 8707), `exp` and `nbf`. Scopes come from `scope` or `scp`. A token must name a
//! subject that is not blank, may live at most `max_token_lifetime` (`exp - iat`, or `exp - now`
//! without `iat` or with one ahead of now), and, with `require_typ`, must carry that JOSE `typ`
//! (RFC 9068 `at+jwt`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::Digest as _;
use tokio::sync::RwLock;

use crate::authz::{Principal, Scope};

/// The algorithms a bearer token may be signed with. Never `none`, never HMAC: an HMAC "key"
/// would be the issuer's public key, which anyone has.
pub const ALLOWED_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// The least time between two JWKS fetches caused by unknown key ids.
pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Clock skew tolerated on `exp` and `nbf` unless `[auth] leeway` says otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// The longest a token may be valid unless `[auth] max_token_lifetime` says otherwise.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The interval over which refusals without a valid token from one source share one record.
pub const DEFAULT_REFUSAL_AUDIT_INTERVAL: Duration = Duration::from_secs(60);

/// Keys older than this are fetched again, so a key the issuer withdrew stops being trusted.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub issuer: String,
    /// The `aud` every token must carry: this server's resource URI.
    pub audience: String,
    /// Where the keys are; discovered from the issuer's metadata when absent.
    pub jwks_uri: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// The longest validity a token may claim: `exp - iat`, or `exp - now` without `iat`.
    pub max_token_lifetime: Duration,
    /// The JOSE `typ` every token must carry (RFC 9068: `at+jwt`), compared without case and
    /// with an `application/` prefix allowed.
    pub require_typ: Option<String>,
    /// Repeated refusals of requests without a valid token from one source are audited as one
    /// counted record per interval.
    pub refusal_audit_interval: Duration,
}

/// Why a request was not authenticated. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot reach the OAuth issuer `{issuer}`: {message}")]
pub struct DiscoveryError {
    pub issuer: String,
    pub message: String,
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeList {
    Space(String),
    List(Vec<String>),
}

#[derive(Deserialize)]
struct BearerClaims {
    sub: Option<String>,
    exp: i64,
    iat: Option<i64>,
    scope: Option<ScopeList>,
    scp: Option<ScopeList>,
    client_id: Option<String>,
    azp: Option<String>,
}

struct Keys {
    set: JwkSet,
    fetched: Instant,
    /// Bumped whenever the set is replaced: tokens verified against an older set are verified
    /// again.
    generation: u64,
}

/// The most verified tokens kept; past it, expired ones go, then all.
const VERIFIED_KEPT: usize = 4096;

/// Tokens that verified, by the SHA-256 of the token, so a client sending the same token on
/// every request pays for its signature once. Only successes are kept (a refused token is
/// checked in full every time, and says why each time), each until its `exp` (never past
/// it: the leeway is for tokens checked in full), and only while the key set it was checked
/// against is the current one. The raw token is not kept.
#[derive(Default)]
struct Verified {
    generation: u64,
    tokens: HashMap<[u8; 32], (Principal, i64)>,
}

impl Verified {
    fn get(&self, digest: &[u8; 32], generation: u64, now: i64) -> Option<Principal> {
        if self.generation != generation {
            return None;
        }
        let (principal, exp) = self.tokens.get(digest)?;
        (now < *exp).then(|| principal.clone())
    }

    fn insert(
        &mut self,
        digest: [u8; 32],
        generation: u64,
        principal: Principal,
        exp: i64,
        now: i64,
    ) {
        if self.generation != generation {
            if generation < self.generation {
                return;
            }
            self.tokens.clear();
            self.generation = generation;
        }
        if self.tokens.len() >= VERIFIED_KEPT {
            self.tokens.retain(|_, (_, exp)| now < *exp);
            if self.tokens.len() >= VERIFIED_KEPT {
                self.tokens.clear();
            }
        }
        self.tokens.insert(digest, (principal, exp));
    }
}

/// Validates bearer tokens for one issuer and audience.
pub struct Authenticator {
    config: AuthConfig,
    jwks_uri: String,
    http: reqwest::Client,
    keys: RwLock<Keys>,
    verified: std::sync::Mutex<Verified>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.config.issuer)
            .field("audience", &self.config.audience)
            .finish_non_exhaustive()
    }
}

/// Makes rustls' `ring` provider the process default. reqwest is built without a provider of its
/// own (`rustls-no-provider`, to keep aws-lc out of the build), so anything in this process that
/// builds a reqwest client calls this first. Idempotent.
pub fn install_crypto_provider() {
    // Fails only when a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The HTTP client for issuer metadata and keys.
fn http_client() -> Result<reqwest::Client, String> {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())
}

impl Authenticator {
    /// Finds the issuer's keys (from `jwks_uri`, or the issuer's metadata) and fetches them.
    pub async fn discover(config: AuthConfig) -> Result<Self, DiscoveryError> {
        let err = |message: String| DiscoveryError {
            issuer: config.issuer.clone(),
            message,
        };
        let http = http_client().map_err(|e| err(format!("HTTP client: {e}")))?;
        let jwks_uri = match &config.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let mut last_error = String::new();
                let mut found = None;
                for url in metadata_urls(&config.issuer) {
                    match fetch_json::<Metadata>(&http, &url).await {
                        Ok(m)
                            if m.issuer.trim_end_matches('/')
                                == config.issuer.trim_end_matches('/') =>
                        {
                            found = Some(m.jwks_uri);
                            break;
                        }
                        Ok(m) => last_error = format!("{url} names the issuer `{}`", m.issuer),
                        Err(e) => last_error = format!("{url}: {e}"),
                    }
                }
                found.ok_or_else(|| {
                    err(format!(
                        "no usable authorization server metadata ({last_error})"
                    ))
                })?
            }
        };
        let set = fetch_json::<JwkSet>(&http, &jwks_uri)
            .await
            .map_err(|e| err(format!("JWKS {jwks_uri}: {e}")))?;
        Ok(Self {
            config,
            jwks_uri,
            http,
            keys: RwLock::new(Keys {
                set,
                fetched: Instant::now(),
                generation: 0,
            }),
            verified: std::sync::Mutex::default(),
        })
    }

    /// An authenticator over a key set obtained elsewhere (tests and benchmarks); an unknown
    /// `kid` still triggers a rate-limited refresh from `jwks_uri`.
    pub fn with_keys(
        config: AuthConfig,
        set: JwkSet,
        jwks_uri: &str,
    ) -> Result<Self, DiscoveryError> {
        let http = http_client().map_err(|message| DiscoveryError {
            issuer: config.issuer.clone(),
            message,
        })?;
        Ok(Self {
            config,
            jwks_uri: jwks_uri.to_owned(),
            http,
            keys: RwLock::new(Keys {
                set,
                fetched: Instant::now(),
                generation: 0,
            }),
            verified: std::sync::Mutex::default(),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    pub fn audience(&self) -> &str {
        &self.config.audience
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The principal a bearer token stands for.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() || token.len() > 16 * 1024 {
            return Err(AuthError::Invalid("the token is malformed".to_owned()));
        }
        // The key set's periodic refresh happens whether or not the token is known.
        self.refresh(JWKS_MAX_AGE).await;
        let generation = self.keys.read().await.generation;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = chrono::Utc::now().timestamp();
        let verified = || self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(principal) = verified().get(&digest, generation, now) {
            return Ok(principal);
        }
        let (principal, exp) = self.verify(token).await?;
        verified().insert(digest, generation, principal.clone(), exp, now);
        Ok(principal)
    }

    /// Checks a token in full: its header, key, signature and claims; the principal and `exp`.
    async fn verify(&self, token: &str) -> Result<(Principal, i64), AuthError> {
        let invalid = |m: &str| AuthError::Invalid(m.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| match raw_alg(token) {
            // `none` and other algorithms the library does not know end here.
            Some(alg) => AuthError::Invalid(format!(
                "the token is signed with `{}`, which is not allowed (RS256, ES256, EdDSA)",
                alg.chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .take(16)
                    .collect::<String>()
            )),
            None => invalid("the token is malformed"),
        })?;
        if !ALLOWED_ALGORITHMS.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "the token is signed with {:?}, which is not allowed (RS256, ES256, EdDSA)",
                header.alg
            )));
        }
        if let Some(required) = &self.config.require_typ
            && !typ_matches(header.typ.as_deref(), required)
        {
            return Err(AuthError::Invalid(format!(
                "the token's type is {}, not `{required}`",
                header
                    .typ
                    .as_deref()
                    .map_or_else(|| "missing".to_owned(), crate::model::quote_input)
            )));
        }
        let key = self.key_for(header.kid.as_deref(), header.alg).await?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway.as_secs();
        let data = jsonwebtoken::decode::<BearerClaims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::ImmatureSignature => "the token is not valid yet",
                ErrorKind::InvalidIssuer => "the token was issued by another issuer",
                ErrorKind::InvalidAudience => "the token is for another audience (resource)",
                ErrorKind::InvalidSignature => "the token signature does not verify",
                ErrorKind::InvalidAlgorithm => "the token's algorithm does not fit its key",
                ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                _ => "the token is malformed",
            })
        })?;
        let claims = data.claims;
        // From `iat`, or from now when there is none or it lies ahead: an `iat` in the future
        // does not shorten a long-lived token.
        let now = chrono::Utc::now().timestamp();
        let lifetime = claims
            .exp
            .saturating_sub(claims.iat.map_or(now, |iat| iat.min(now)));
        let max = self.config.max_token_lifetime.as_secs();
        if lifetime > i64::try_from(max).unwrap_or(i64::MAX) {
            return Err(AuthError::Invalid(format!(
                "the token is valid for {}, longer than the {} this server accepts",
                humantime::format_duration(Duration::from_secs(lifetime.unsigned_abs())),
                humantime::format_duration(self.config.max_token_lifetime)
            )));
        }
        let client = claims.client_id.or(claims.azp);
        let subject = claims
            .sub
            .or_else(|| client.clone())
            .ok_or_else(|| invalid("the token names no subject"))?;
        if subject.trim().is_empty() {
            return Err(invalid("the token's subject is empty"));
        }
        let raw_scopes: Vec<String> = match claims.scope.or(claims.scp) {
            Some(ScopeList::Space(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(ScopeList::List(v)) => v,
            None => Vec::new(),
        };
        // Scopes this server does not know are ignored, not errors.
        let scopes = raw_scopes.iter().filter_map(|s| Scope::parse(s).ok());
        // Subjects and client ids are compared and stored in normal form; one outside the safe
        // set (or one of the server's own names) is refused, never mapped onto someone else.
        let mut principal = Principal::parse("the token's subject", &subject, scopes)
            .map_err(|e| AuthError::Invalid(e.0))?;
        principal.issuer = Some(self.config.issuer.clone());
        principal.client_id = client
            .map(|c| crate::authz::principal_id::parse_external("the token's client id", &c))
            .transpose()
            .map_err(|e| AuthError::Invalid(e.0))?;
        Ok((principal, claims.exp))
    }

    /// The key for `kid`, refreshing the JWKS (rate-limited) when the id is unknown.
    /// (`authenticate` has already refreshed a set older than `JWKS_MAX_AGE`.)
    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, AuthError> {
        if let Some(key) = self.find(kid, alg).await {
            return key;
        }
        self.refresh(JWKS_REFRESH_INTERVAL).await;
        self.find(kid, alg).await.unwrap_or_else(|| {
            Err(AuthError::Invalid(
                "the token is signed with an unknown key".to_owned(),
            ))
        })
    }

    /// Fetches the key set again if the last fetch is at least `older_than` ago; one request at
    /// a time, and a failed fetch keeps the keys there are.
    async fn refresh(&self, older_than: Duration) {
        if self.keys.read().await.fetched.elapsed() < older_than {
            return;
        }
        let mut keys = self.keys.write().await;
        if keys.fetched.elapsed() < older_than {
            return;
        }
        keys.fetched = Instant::now();
        match fetch_json::<JwkSet>(&self.http, &self.jwks_uri).await {
            Ok(set) => {
                keys.set = set;
                keys.generation += 1;
            }
            Err(e) => tracing::warn!(jwks = %self.jwks_uri, error = %e, "JWKS refresh failed"),
        }
    }

    async fn find(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Option<Result<DecodingKey, AuthError>> {
        let keys = self.keys.read().await;
        let jwk = match kid {
            Some(kid) => keys.set.find(kid)?,
            // Without a `kid`, only an unambiguous key set will do.
            None if keys.set.keys.len() == 1 => &keys.set.keys[0],
            None => return None,
        };
        if let Some(key_alg) = jwk.common.key_algorithm
            && format!("{key_alg:?}") != format!("{alg:?}")
        {
            return Some(Err(AuthError::Invalid(
                "the token's algorithm does not fit its key".to_owned(),
            )));
        }
        Some(
            DecodingKey::from_jwk(jwk)
                .map_err(|_| AuthError::Invalid("the issuer's key is unusable".to_owned())),
        )
    }
}

/// Whether a JOSE `typ` is `required`: compared without case, `application/` optional
/// (RFC 7515 §4.1.9, RFC 9068 §2.1).
fn typ_matches(typ: Option<&str>, required: &str) -> bool {
    fn bare(t: &str) -> &str {
        match t.get(..12) {
            Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &t[12..],
            _ => t,
        }
    }
    typ.is_some_and(|t| bare(t).eq_ignore_ascii_case(bare(required)))
}

/// Where an issuer's metadata may be: RFC 8414 inserts the well-known path between host and
/// path; OpenID Connect appends it.
pub(crate) fn metadata_urls(issuer: &str) -> Vec<String> {
    let issuer = issuer.trim_end_matches('/');
    let (scheme, rest) = issuer.split_once("://").unwrap_or(("https", issuer));
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, String::new()), |(h, p)| (h, format!("/{p}")));
    let mut urls = vec![
        format!("{scheme}://{host}/.well-known/oauth-authorization-server{path}"),
        format!("{issuer}/.well-known/openid-configuration"),
    ];
    if !path.is_empty() {
        urls.push(format!(
            "{scheme}://{host}/.well-known/openid-configuration{path}"
        ));
    }
    urls
}

/// The `alg` of a token's header, read without trusting anything else about it.
fn raw_alg(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(value.get("alg")?.as_str()?.to_owned())
}

async fn fetch_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> Result<T, String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    response.json::<T>().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use ed25519_dalek::SigningKey;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    struct Issuer {
        encoding: EncodingKey,
        auth: Authenticator,
    }

    fn issuer() -> Issuer {
        issuer_with(|_| {})
    }

    fn issuer_with(adjust: impl FnOnce(&mut AuthConfig)) -> Issuer {
        let signing = SigningKey::generate(&mut rand::rngs::OsRng);
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(signing.verifying_key().as_bytes());
        let set: JwkSet = serde_json::from_value(json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA", "use": "sig"}
        ]}))
        .expect("jwks");
        let der = signing.to_pkcs8_der().expect("der");
        let config = AuthConfig {
            issuer: "https://idp.test".into(),
            audience: "https://nhi.test/mcp".into(),
            jwks_uri: None,
            leeway: DEFAULT_LEEWAY,
            max_token_lifetime: DEFAULT_MAX_TOKEN_LIFETIME,
            require_typ: None,
            refusal_audit_interval: DEFAULT_REFUSAL_AUDIT_INTERVAL,
        };
        let mut config = config;
        adjust(&mut config);
        Issuer {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            // Nothing listens there: a refresh fails and the key set stays as it was.
            auth: Authenticator::with_keys(config, set, "http://127.0.0.1:9/jwks").expect("auth"),
        }
    }

    fn token(i: &Issuer, kid: &str, claims: serde_json::Value) -> String {
        typed_token(i, kid, Some("JWT"), claims)
    }

    fn typed_token(i: &Issuer, kid: &str, typ: Option<&str>, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        header.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &i.encoding).expect("sign")
    }

    async fn refusal(i: &Issuer, token: &str) -> Option<String> {
        i.auth
            .authenticate(token)
            .await
            .err()
            .map(|e| e.to_string())
    }

    // oidc-provider cannot issue a blank subject or a ten-year token: these are signed locally.
    #[tokio::test]
    async fn blank_subjects_are_refused() {
        let i = issuer();
        for sub in ["", " ", "\t\n", "\u{3000}", "\u{00a0}"] {
            let mut c = claims(300, 0);
            c["sub"] = json!(sub);
            let e = refusal(&i, &token(&i, "k1", c)).await;
            assert_eq!(
                e.as_deref(),
                Some("the token's subject is empty"),
                "{sub:?}"
            );
        }
        // No `sub`: the client stands for itself, unless it is blank too.
        let mut c = claims(300, 0);
        c.as_object_mut().expect("object").remove("sub");
        assert_eq!(
            i.auth
                .authenticate(&token(&i, "k1", c.clone()))
                .await
                .expect("client")
                .id,
            "ci"
        );
        c["client_id"] = json!(" ");
        assert!(
            refusal(&i, &token(&i, "k1", c))
                .await
                .is_some_and(|e| e.contains("empty"))
        );
    }

    #[tokio::test]
    async fn lifetimes_beyond_the_cap_are_refused() {
        let i = issuer_with(|c| c.max_token_lifetime = Duration::from_secs(3600));
        let now = chrono::Utc::now().timestamp();
        let with = |iat: Option<i64>, exp: i64| {
            let mut c = claims(0, 0);
            c["exp"] = json!(exp);
            match iat {
                Some(iat) => c["iat"] = json!(iat),
                None => {
                    c.as_object_mut().expect("object").remove("iat");
                }
            }
            token(&i, "k1", c)
        };
        // exp - iat: the boundary is allowed, one second more is not.
        assert_eq!(refusal(&i, &with(Some(now), now + 3600)).await, None);
        let e = refusal(&i, &with(Some(now), now + 3601))
            .await
            .expect("refused");
        assert!(e.contains("longer than the 1h"), "{e}");
        // A token issued long ago with a long life is refused though little of it is left.
        assert!(
            refusal(&i, &with(Some(now - 86_400), now + 60))
                .await
                .is_some()
        );
        // Without `iat`: exp - now.
        assert_eq!(refusal(&i, &with(None, now + 3000)).await, None);
        // An `iat` ahead of now counts from now: a day-long token claiming a later issue
        // time is still a day long.
        assert!(
            refusal(&i, &with(Some(now + 86_000), now + 86_400))
                .await
                .is_some()
        );
        assert!(
            refusal(&i, &with(None, now + 10 * 365 * 86_400))
                .await
                .is_some()
        );
        // The default cap is 24 h: a ten-year token is refused.
        let d = issuer();
        let mut c = claims(10 * 365 * 86_400, 0);
        c["iat"] = json!(now);
        assert!(refusal(&d, &token(&d, "k1", c.clone())).await.is_some());
        c["exp"] = json!(now + 86_400);
        assert_eq!(refusal(&d, &token(&d, "k1", c)).await, None);
    }

    #[tokio::test]
    async fn require_typ_accepts_only_that_type() {
        let i = issuer_with(|c| c.require_typ = Some("at+jwt".into()));
        for (typ, ok) in [
            (Some("at+jwt"), true),
            (Some("AT+JWT"), true),
            (Some("application/at+jwt"), true),
            (Some("Application/At+Jwt"), true),
            (Some("JWT"), false),
            (Some("at+jwt "), false),
            (Some("at+jwtx"), false),
            (Some("application/jwt"), false),
            (Some("dpop+jwt"), false),
            (Some("аt+jwt"), false), // Cyrillic `а`
            (None, false),
        ] {
            let e = refusal(&i, &typed_token(&i, "k1", typ, claims(300, 0))).await;
            assert_eq!(e.is_none(), ok, "{typ:?}: {e:?}");
            if let Some(e) = e {
                assert!(e.contains("type"), "{e}");
            }
        }
        // Without the option, any type passes.
        let any = issuer();
        assert_eq!(
            refusal(&any, &typed_token(&any, "k1", None, claims(300, 0))).await,
            None
        );
    }

    fn claims(offset_exp: i64, offset_nbf: i64) -> serde_json::Value {
        let now = chrono::Utc::now().timestamp();
        json!({"iss": "https://idp.test", "aud": "https://nhi.test/mcp", "sub": "agent-7",
               "client_id": "ci", "scp": ["nhi:read", "nhi:unknown"], "exp": now + offset_exp, "nbf": now + offset_nbf})
    }

    #[tokio::test]
    async fn valid_token_gives_subject_client_and_known_scopes() {
        let i = issuer();
        let p = i
            .auth
            .authenticate(&token(&i, "k1", claims(300, 0)))
            .await
            .expect("valid");
        assert_eq!(p.id, "agent-7");
        assert_eq!(p.client_id.as_deref(), Some("ci"));
        assert_eq!(p.issuer.as_deref(), Some("https://idp.test"));
        assert_eq!(p.scope_list(), vec!["nhi:read"]);
    }

    #[tokio::test]
    async fn expired_not_yet_valid_and_unknown_key_are_refused() {
        let i = issuer();
        let check = async |t: String, expect: &str| {
            let e = i
                .auth
                .authenticate(&t)
                .await
                .expect_err("refused")
                .to_string();
            assert!(e.contains(expect), "`{e}` lacks `{expect}`");
        };
        // Beyond the 30 s leeway either way.
        check(token(&i, "k1", claims(-120, -600)), "expired").await;
        check(token(&i, "k1", claims(600, 120)), "not valid yet").await;
        check(token(&i, "k2", claims(300, 0)), "unknown key").await;
        // Within the leeway: accepted.
        assert!(
            i.auth
                .authenticate(&token(&i, "k1", claims(-10, 10)))
                .await
                .is_ok()
        );
        // An unknown kid does not cause a refresh more than once per interval.
        let before = i.auth.keys.read().await.fetched;
        check(token(&i, "k3", claims(300, 0)), "unknown key").await;
        assert_eq!(
            i.auth.keys.read().await.fetched,
            before,
            "refreshed inside the interval"
        );
    }

    /// Issue 9: a verified token is kept until its `exp` only, never past it, and only for the
    /// key set it was verified against; the map stays bounded.
    #[test]
    fn verified_tokens_are_kept_until_exp_for_their_key_set() {
        let p = Principal::new("agent-7", [Scope::Read]);
        let mut v = Verified::default();
        v.insert([1; 32], 0, p.clone(), 100, 50);
        assert_eq!(v.get(&[1; 32], 0, 99).map(|p| p.id), Some("agent-7".into()));
        assert!(v.get(&[1; 32], 0, 100).is_none(), "kept at its exp");
        assert!(v.get(&[2; 32], 0, 50).is_none(), "another token");
        assert!(
            v.get(&[1; 32], 1, 50).is_none(),
            "kept across a new key set"
        );
        // A verification that began under an older key set keeps nothing.
        v.insert([3; 32], 1, p.clone(), 100, 50);
        v.insert([4; 32], 0, p.clone(), 100, 50);
        assert!(v.get(&[4; 32], 0, 50).is_none() && v.get(&[4; 32], 1, 50).is_none());
        assert!(
            v.get(&[1; 32], 1, 50).is_none(),
            "the old set's tokens went"
        );
        for n in 0..(VERIFIED_KEPT + 10) {
            let mut digest = [0; 32];
            digest[..8].copy_from_slice(&(n as u64).to_le_bytes());
            v.insert(digest, 1, p.clone(), 100, 50);
            assert!(v.tokens.len() <= VERIFIED_KEPT);
        }
    }

    /// A token that verified is not re-verified while it is valid, but a key set fetched since
    /// (the IdP rotated its key away) checks it again; a refused token is refused every time.
    #[tokio::test]
    async fn a_rotated_key_set_checks_kept_tokens_again() {
        let served = std::sync::Arc::new(std::sync::Mutex::new(serde_json::Value::Null));
        let app = {
            let served = served.clone();
            axum::Router::new().route(
                "/jwks",
                axum::routing::get(move || {
                    let body = served.lock().unwrap().clone();
                    async move { axum::Json(body) }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut i = issuer();
        i.auth.jwks_uri = format!("http://{addr}/jwks");
        let good = token(&i, "k1", claims(300, 0));
        let expired = token(&i, "k1", claims(-120, -600));
        for _ in 0..2 {
            assert_eq!(i.auth.authenticate(&good).await.unwrap().id, "agent-7");
            let e = i.auth.authenticate(&expired).await.unwrap_err().to_string();
            assert!(e.contains("expired"), "{e}");
        }
        // The IdP now publishes another key only; the periodic refresh fetches it.
        let other = issuer();
        *served.lock().unwrap() = serde_json::to_value(&other.auth.keys.read().await.set).unwrap();
        let long_ago = Instant::now().checked_sub(JWKS_MAX_AGE * 2).unwrap();
        i.auth.keys.write().await.fetched = long_ago;
        // The new key has the same `kid`: the kept token is checked against it, and fails.
        let e = i.auth.authenticate(&good).await.unwrap_err().to_string();
        assert!(e.contains("signature does not verify"), "{e}");
        server.abort();
    }

    /// Issue #8: a token's subject and client id are normalised; look-alikes and the server's
    /// own names are refused with a one-line error.
    #[tokio::test]
    async fn token_subjects_are_normalised_or_refused() {
        let i = issuer();
        let with = |sub: &str, client: &str| {
            let mut c = claims(300, 0);
            c["sub"] = json!(sub);
            c["client_id"] = json!(client);
            token(&i, "k1", c)
        };
        let p = i
            .auth
            .authenticate(&with("Agent-7 ", "CI"))
            .await
            .expect("valid");
        assert_eq!(p.id, "agent-7");
        assert_eq!(p.client_id.as_deref(), Some("ci"));
        for (sub, client, want) in [
            ("agent-7\u{200b}", "ci", "the token's subject"),
            ("\u{430}gent-7", "ci", "the token's subject"),
            ("nhi-mcp", "ci", "reserved"),
            ("Anonymous", "ci", "reserved"),
            ("cli:local", "ci", "reserved"),
            ("agent\n7", "ci", "the token's subject"),
            ("agent-7", "c\u{3b9}", "the token's client id"),
        ] {
            let e = i
                .auth
                .authenticate(&with(sub, client))
                .await
                .expect_err(sub)
                .to_string();
            assert!(e.contains(want), "`{e}` lacks `{want}`");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
