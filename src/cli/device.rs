//! Signing an approver in at the `[auth]` issuer with the OAuth 2.0 device authorization grant
//! (RFC 8628): the CLI asks the issuer for a user code, prints where to enter it, polls the token
//! endpoint, and validates the access token it gets like any bearer token (`auth::Authenticator`:
//! issuer, audience, expiry), which must also hold `nhi:approve`.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use crate::auth::{AuthConfig, Authenticator};
use crate::authz::{Principal, Scope};

/// The longest the CLI waits for the approver to sign in, whatever the issuer says.
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// RFC 8628 §3.5: the polling interval when the issuer names none, and the step `slow_down` adds.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    token_endpoint: String,
    device_authorization_endpoint: Option<String>,
}

#[derive(Deserialize)]
struct DeviceAuthorization {
    device_code: String,
    user_code: String,
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: Option<u64>,
    interval: Option<u64>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Signs the approver in and returns the principal the access token stands for.
pub async fn sign_in(auth: &AuthConfig, client_id: &str) -> anyhow::Result<Principal> {
    crate::auth::install_crypto_provider();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .context("cannot build the HTTP client")?;
    let metadata = discover(&http, &auth.issuer).await?;
    let endpoint = metadata.device_authorization_endpoint.ok_or_else(|| {
        anyhow!(
            "the issuer `{}` offers no device authorization endpoint (RFC 8628): approve with `--approver NAME --key FILE`, or in the admin API",
            auth.issuer
        )
    })?;
    let scope = Scope::Approve.as_str();
    let started: DeviceAuthorization = post_form(
        &http,
        &endpoint,
        &[
            ("client_id", client_id),
            ("scope", scope),
            ("resource", &auth.audience),
        ],
    )
    .await
    .and_then(|(status, body)| {
        if status.is_success() {
            serde_json::from_slice(&body)
                .map_err(|e| anyhow!("the device authorization response is unusable: {e}"))
        } else {
            Err(anyhow!(
                "the issuer refused the device authorization request: {}",
                oauth_error(&body)
            ))
        }
    })?;
    eprintln!(
        "to approve, sign in at {} and enter the code {}",
        printable(&started.verification_uri),
        printable(&started.user_code)
    );
    if let Some(complete) = &started.verification_uri_complete {
        eprintln!("(or open {})", printable(complete));
    }
    eprintln!("waiting for the sign-in…");

    let wait = Duration::from_secs(started.expires_in.unwrap_or(600)).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    let mut interval = started
        .interval
        .map_or(DEFAULT_INTERVAL, Duration::from_secs)
        .max(Duration::from_secs(1));
    let token = loop {
        tokio::time::sleep(interval).await;
        if Instant::now() > deadline {
            bail!("the sign-in was not completed in time; run the command again");
        }
        let (status, body) = post_form(
            &http,
            &metadata.token_endpoint,
            &[
                ("grant_type", GRANT_TYPE),
                ("device_code", &started.device_code),
                ("client_id", client_id),
                ("resource", &auth.audience),
            ],
        )
        .await?;
        let answer: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| anyhow!("the token endpoint answered HTTP {status} without JSON"))?;
        match (answer.access_token, answer.error.as_deref()) {
            (Some(token), _) if status.is_success() => break token,
            (_, Some("authorization_pending")) => {}
            (_, Some("slow_down")) => interval += DEFAULT_INTERVAL,
            (_, Some("access_denied")) => bail!("the sign-in was declined at the issuer"),
            (_, Some("expired_token")) => {
                bail!("the sign-in code expired; run the command again")
            }
            _ => bail!("the issuer refused the token: {}", oauth_error(&body)),
        }
    };
    let authenticator = Authenticator::discover(auth.clone()).await?;
    let principal = authenticator
        .authenticate(&token)
        .await
        .map_err(|e| anyhow!("the token from the sign-in is not accepted: {e}"))?;
    if !principal.has(Scope::Approve) {
        bail!(
            "`{}` signed in, but the token does not hold `nhi:approve`",
            principal.id
        );
    }
    eprintln!("signed in as `{}`", principal.id);
    Ok(principal)
}

async fn discover(http: &reqwest::Client, issuer: &str) -> anyhow::Result<Metadata> {
    let mut last = String::new();
    for url in crate::auth::metadata_urls(issuer) {
        match http.get(&url).send().await {
            Ok(r) if r.status().is_success() => match r.json::<Metadata>().await {
                Ok(m) if m.issuer.trim_end_matches('/') == issuer.trim_end_matches('/') => {
                    return Ok(m);
                }
                Ok(m) => last = format!("{url} names the issuer `{}`", printable(&m.issuer)),
                Err(e) => last = format!("{url}: {e}"),
            },
            Ok(r) => last = format!("{url}: HTTP {}", r.status()),
            Err(e) => last = format!("{url}: {e}"),
        }
    }
    bail!("cannot read the metadata of the issuer `{issuer}` ({last})")
}

async fn post_form(
    http: &reqwest::Client,
    url: &str,
    fields: &[(&str, &str)],
) -> anyhow::Result<(reqwest::StatusCode, Vec<u8>)> {
    let body = fields
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let response = http
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .with_context(|| format!("cannot read the answer of {url}"))?;
    Ok((status, bytes.to_vec()))
}

/// `error: description` from an OAuth error body, printable and bounded.
fn oauth_error(body: &[u8]) -> String {
    match serde_json::from_slice::<TokenResponse>(body) {
        Ok(TokenResponse {
            error: Some(e),
            error_description,
            ..
        }) => printable(&match error_description {
            Some(d) => format!("{e}: {d}"),
            None => e,
        }),
        _ => "no OAuth error in the answer".to_owned(),
    }
}

/// Text from the issuer, made safe to print: no control characters, at most 300 characters.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() && !matches!(c, '\u{2028}' | '\u{2029}'))
        .take(300)
        .collect()
}
