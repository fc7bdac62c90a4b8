//! DNS-rebinding and cross-origin checks for the routes rmcp does not guard itself (the admin
//! API), with the same rules rmcp applies to `/mcp` (`[http] allowed_hosts`, `allowed_origins`),
//! and the refusal of a request with more than one `Host` header on every guarded route.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The allowed `Host` and `Origin` values.
#[derive(Debug, Clone)]
pub struct Allowed {
    pub hosts: Vec<String>,
    pub origins: Vec<String>,
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// Refuses a request with two or more `Host` headers (400): which one counts would differ
/// between a proxy and this server.
pub async fn single_host(request: Request, next: Next) -> Response {
    if request
        .headers()
        .get_all(header::HOST)
        .iter()
        .nth(1)
        .is_some()
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the request carries more than one `Host` header",
        );
    }
    next.run(request).await
}

/// `Host` and `Origin` checks for the admin API: 400 for a missing or malformed `Host`, 403 for
/// one not allowed or a foreign `Origin`.
pub async fn guard(State(allowed): State<Arc<Allowed>>, request: Request, next: Next) -> Response {
    if let Err((status, message)) = check(request.uri(), request.headers(), &allowed) {
        return refuse(status, message);
    }
    next.run(request).await
}

/// The refusal is a status and its message.
pub fn check(
    uri: &Uri,
    headers: &HeaderMap,
    allowed: &Allowed,
) -> Result<(), (StatusCode, &'static str)> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let authority = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => {
            return Err((
                StatusCode::BAD_REQUEST,
                "the request carries more than one `Host` header",
            ));
        }
        (Some(value), None) => value
            .to_str()
            .ok()
            .and_then(|v| axum::http::uri::Authority::try_from(v).ok()),
        (None, _) => uri.authority().cloned(),
    };
    let Some(authority) = authority else {
        return Err((
            StatusCode::BAD_REQUEST,
            "the request has no valid `Host` header",
        ));
    };
    let host = normalize_host(authority.host());
    let port = authority.port_u16();
    if !allowed.hosts.is_empty()
        && !allowed
            .hosts
            .iter()
            .filter_map(|a| parse_authority(a))
            .any(|(h, p)| h == host && p.is_none_or(|p| Some(p) == port))
    {
        tracing::warn!(host = %host, "admin request with a Host that is not allowed (possible DNS rebinding)");
        return Err((StatusCode::FORBIDDEN, "the `Host` header is not allowed"));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let allowed_origin = origin
        .to_str()
        .ok()
        .and_then(parse_origin)
        .is_some_and(|o| allowed.origins.iter().any(|a| origin_matches(a, &o)));
    if !allowed_origin {
        tracing::warn!("admin request from an Origin that is not allowed");
        return Err((StatusCode::FORBIDDEN, "the `Origin` header is not allowed"));
    }
    Ok(())
}

fn normalize_host(host: &str) -> String {
    host.trim_matches(['[', ']']).to_ascii_lowercase()
}

fn parse_authority(raw: &str) -> Option<(String, Option<u16>)> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    match axum::http::uri::Authority::try_from(raw) {
        Ok(a) => Some((normalize_host(a.host()), a.port_u16())),
        Err(_) => Some((normalize_host(raw), None)),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Origin {
    Null,
    Tuple {
        scheme: String,
        host: String,
        port: Option<u16>,
    },
}

fn parse_origin(raw: &str) -> Option<Origin> {
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("null") {
        return Some(Origin::Null);
    }
    let uri = Uri::try_from(raw).ok()?;
    let authority = uri.authority()?;
    Some(Origin::Tuple {
        scheme: uri.scheme_str()?.to_ascii_lowercase(),
        host: normalize_host(authority.host()),
        port: authority.port_u16(),
    })
}

/// rmcp's rule: `scheme://host:*` any port; `scheme://host:N` that port (or the scheme's
/// default); `scheme://host` any port; `null` the opaque origin.
fn origin_matches(allowed: &str, origin: &Origin) -> bool {
    let allowed = allowed.trim();
    let (base, any_port) = match allowed.strip_suffix(":*") {
        Some(base) => (base, true),
        None => (allowed, false),
    };
    let Some(parsed) = parse_origin(base) else {
        return false;
    };
    match (parsed, origin) {
        (Origin::Null, Origin::Null) => !any_port,
        (
            Origin::Tuple { scheme, host, port },
            Origin::Tuple {
                scheme: o_scheme,
                host: o_host,
                port: o_port,
            },
        ) => {
            if any_port && port.is_some() {
                return false;
            }
            let default = match o_scheme.as_str() {
                "http" => Some(80),
                "https" => Some(443),
                _ => None,
            };
            &scheme == o_scheme
                && &host == o_host
                && port.is_none_or(|p| o_port.or(default) == Some(p))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Allowed {
        Allowed {
            hosts: vec![
                "localhost".into(),
                "127.0.0.1".into(),
                "::1".into(),
                "nhi.example.com:8443".into(),
            ],
            origins: vec![
                "http://localhost:*".into(),
                "https://admin.example.com".into(),
                "https://ui.example.com:8443".into(),
            ],
        }
    }

    fn status(host: &[&str], origin: Option<&str>) -> u16 {
        let mut h = HeaderMap::new();
        for v in host {
            h.append(header::HOST, v.parse().expect("host"));
        }
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().expect("origin"));
        }
        match check(&Uri::from_static("/admin/v1/proposals"), &h, &allowed()) {
            Ok(()) => 200,
            Err((status, _)) => status.as_u16(),
        }
    }

    #[test]
    fn hosts_and_origins_follow_the_mcp_rules() {
        for (host, origin, expect) in [
            (&["localhost:8080"][..], None, 200),
            (&["LOCALHOST"][..], None, 200),
            (&["[::1]:9"][..], None, 200),
            (&["nhi.example.com:8443"][..], None, 200),
            (&["nhi.example.com"][..], None, 403),
            (&["nhi.example.com:443"][..], None, 403),
            (&["evil.example.com"][..], None, 403),
            (&["localhost.evil.example.com"][..], None, 403),
            (&["localhost", "evil.example.com"][..], None, 400),
            (&["localhost", "localhost"][..], None, 400),
            (&[][..], None, 400),
            (&["bad host"][..], None, 400),
            (&["localhost"][..], Some("http://localhost:3000"), 200),
            (&["localhost"][..], Some("https://admin.example.com"), 200),
            (&["localhost"][..], Some("https://ui.example.com"), 403),
            (&["localhost"][..], Some("https://ui.example.com:8443"), 200),
            (&["localhost"][..], Some("https://evil.example.com"), 403),
            (
                &["localhost"][..],
                Some("http://localhost.evil.example.com:3000"),
                403,
            ),
            (&["localhost"][..], Some("null"), 403),
            (&["localhost"][..], Some("garbage"), 403),
        ] {
            assert_eq!(status(host, origin), expect, "{host:?} {origin:?}");
        }
    }
}
