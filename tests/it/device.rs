//! Issue #8: with `[auth]`, `nhi-mcp approve ID` signs the approver in at the real issuer
//! (oidc-provider) with the OAuth device authorization grant (RFC 8628). The test is the person
//! at the browser: it reads the user code the CLI prints, drives the issuer's verification and
//! sign-in pages with plain HTTP requests, and the CLI approves as the token's subject.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::common::*;

/// A browser without JavaScript: follows redirects by hand and keeps cookies by name.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new(issuer: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: issuer.trim_end_matches('/').to_owned(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn absorb(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all("set-cookie") {
            let text = value.to_str().expect("ascii cookie");
            let pair = text.split(';').next().unwrap_or_default();
            let (name, value) = pair.split_once('=').expect("name=value");
            if value.is_empty()
                || text
                    .to_ascii_lowercase()
                    .contains("expires=thu, 01 jan 1970")
            {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    /// GET `url` (or POST `form` to it), following redirects; the final URL and page.
    async fn go(&mut self, url: &str, form: Option<&[(&str, &str)]>) -> (String, String) {
        let mut url = url.to_owned();
        let mut request = match form {
            Some(form) => self.http.post(&url).form(form),
            None => self.http.get(&url),
        };
        for _ in 0..10 {
            let response = request
                .header("cookie", self.cookie_header())
                .send()
                .await
                .expect("issuer page");
            self.absorb(&response);
            if response.status().is_redirection() {
                let location = response.headers()["location"].to_str().expect("location");
                url = if location.starts_with('/') {
                    format!("{}{location}", self.base)
                } else {
                    location.to_owned()
                };
                request = self.http.get(&url);
                continue;
            }
            let status = response.status();
            let page = response.text().await.expect("page");
            assert!(status.is_success(), "{url}: HTTP {status}: {page}");
            return (url, page);
        }
        panic!("too many redirects from {url}");
    }

    /// The person's part of the device flow: enter `user_code`, sign in as `login`, consent.
    async fn sign_in(&mut self, verification_uri: &str, user_code: &str, login: &str) {
        let (_, page) = self
            .go(&format!("{verification_uri}?user_code={user_code}"), None)
            .await;
        let xsrf = page
            .split("name=\"xsrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("xsrf field")
            .to_owned();
        let (login_page, _) = self
            .go(
                verification_uri,
                Some(&[
                    ("xsrf", &xsrf),
                    ("user_code", user_code),
                    ("confirm", "yes"),
                ]),
            )
            .await;
        assert!(login_page.contains("/interaction/"), "{login_page}");
        let (consent_page, _) = self
            .go(
                &login_page,
                Some(&[("prompt", "login"), ("login", login), ("password", "any")]),
            )
            .await;
        let (_, done) = self.go(&consent_page, Some(&[("prompt", "consent")])).await;
        assert!(done.contains("Sign-in Success"), "{done}");
    }
}

/// Runs `nhi-mcp approve ID` (no `--key`), plays the person signing in as `login`, and returns
/// the CLI's exit code, stdout and stderr.
async fn approve_by_sign_in(env: &Env, idp: &Idp, id: &str, login: &str) -> (i32, String, String) {
    let mut child = tokio::process::Command::from(env.command(&["approve", id]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn approve");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    let (uri, code) = loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), stderr.read_line(&mut line))
            .await
            .expect("the CLI printed no user code in time")
            .expect("read stderr");
        assert!(n > 0, "the CLI ended before printing a user code: {seen}");
        seen.push_str(&line);
        if let Some(rest) = line.trim().strip_prefix("to approve, sign in at ") {
            let (uri, code) = rest
                .split_once(" and enter the code ")
                .expect("uri and code");
            break (uri.to_owned(), code.to_owned());
        }
    };
    assert!(uri.starts_with(&idp.issuer), "{uri}");
    Browser::new(&idp.issuer).sign_in(&uri, &code, login).await;
    let mut out = String::new();
    let mut rest = String::new();
    let status = tokio::time::timeout(Duration::from_secs(60), async {
        let mut stdout = child.stdout.take().expect("stdout");
        stdout.read_to_string(&mut out).await.expect("stdout");
        stderr.read_to_string(&mut rest).await.expect("stderr");
        child.wait().await.expect("wait")
    })
    .await
    .expect("the CLI did not finish after the sign-in");
    seen.push_str(&rest);
    (status.code().unwrap_or(-1), out, seen)
}

#[tokio::test]
async fn issue_8_approve_signs_in_with_the_device_flow() {
    let idp = Idp::start();
    let env = Env::with_config(&idp.config(""));
    let server = env.http_server();
    let agent_token = idp
        .token("agent", "nhi:read nhi:propose nhi:apply", RESOURCE)
        .await;
    let agent = server.client_with_token(&agent_token).await;
    let (identity, credential) = rotation_target(&agent).await;
    let id = propose(&agent, &identity, &credential).await;

    // The requester signs in under another spelling of itself: refused.
    let (code, out, err) = approve_by_sign_in(&env, &idp, &id, "Agent ").await;
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("cannot approve"), "{err}");
    // A look-alike subject (Cyrillic а) is refused as a principal id.
    let (code, _, err) = approve_by_sign_in(&env, &idp, &id, "\u{430}lice@example.com").await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the token's subject"), "{err}");
    // The server's own name as a subject: refused.
    let (code, _, err) = approve_by_sign_in(&env, &idp, &id, "NHI-MCP").await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("reserved"), "{err}");

    // A real approver: approved as the token's subject, normalised; the token is on stdout.
    let (code, out, err) = approve_by_sign_in(&env, &idp, &id, "Alice@Example.com").await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("signed in as `alice@example.com`"), "{err}");
    let token = out.trim();
    assert_eq!(token.split('.').count(), 3, "{out:?}");
    let applied = agent
        .call(
            "apply_proposal",
            json!({"proposal_id": id, "approval_token": token}),
        )
        .await
        .ok();
    assert_eq!(applied["proposal"]["status"], "applied", "{applied}");
    agent.close().await;

    let audit = env.audit();
    let approvals: Vec<&Value> = audit_for(&audit, "approve")
        .into_iter()
        .filter(|r| r["decision"] == "allow")
        .collect();
    assert_eq!(approvals.len(), 1, "{approvals:?}");
    // The refused sign-ins are audited too: the self-approval by the engine, the look-alike
    // and the reserved subject by the CLI.
    let refused: Vec<&str> = audit_for(&audit, "approve")
        .into_iter()
        .filter(|r| r["decision"] != "allow")
        .map(|r| r["reason"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(
        refused.iter().any(|r| r.contains("cannot approve")),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|r| r.contains("reserved")),
        "{refused:?}"
    );
    assert_eq!(approvals[0]["principal"], "alice@example.com");
    assert_eq!(approvals[0]["issuer"], idp.issuer.as_str());
    assert_eq!(approvals[0]["client_id"], "nhi-mcp-cli");
}

/// A bearer token whose subject is one of the server's own names is refused on `/mcp`.
#[tokio::test]
async fn issue_8_a_token_for_a_reserved_name_is_refused() {
    let idp = Idp::start();
    let env = Env::with_config(&idp.config(""));
    let server = env.http_server();
    let token = idp.token("Anonymous", "nhi:read", RESOURCE).await;
    let response = post(&server.url, Some(&token), &init()).await;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("json");
    let error = body["error"].as_str().expect("error");
    assert!(error.contains("reserved"), "{error}");
}
