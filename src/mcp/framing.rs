//! JSON-RPC framing in front of rmcp: every request that carries an id gets exactly one answer.
//!
//! rmcp drops what it cannot parse (a line that is not JSON, `params: []`, an `id` of the wrong
//! type) or answers it with `id: null`, so the client that sent it waits forever. Each message
//! is checked here first: a malformed request is answered with a JSON-RPC error that carries its
//! id (`-32600` invalid request, `-32602` invalid params; `-32700` with `id: null` for a line
//! that is not JSON), and only well-formed messages reach rmcp. Over stdio this is a thin layer
//! of lines and an in-memory duplex; over HTTP, an axum middleware on `POST /mcp`.

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rmcp::model::ClientJsonRpcMessage;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::model::bound_echoes;

/// The longest message accepted, in bytes (rmcp's limit for HTTP bodies).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const INVALID_PARAMS: i64 = -32602;
const METHOD_NOT_FOUND: i64 = -32601;

/// The MCP request methods passed on to rmcp; for any other, rmcp's answer would echo the
/// method name raw, so it is answered here.
const METHODS: [&str; 17] = [
    "initialize",
    "ping",
    "server/discover",
    "prompts/get",
    "prompts/list",
    "resources/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "resources/templates/list",
    "subscriptions/listen",
    "tools/call",
    "tools/list",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/list",
];

/// What to do with one incoming message.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Well-formed: hand it to rmcp.
    Forward,
    /// Malformed: send this JSON-RPC error instead.
    Answer(Value),
    /// Malformed but not a request (a notification or a response): nothing to answer.
    Ignore,
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": bound_echoes(message)}})
}

/// Checks one message's JSON-RPC shape.
pub fn check_message(raw: &[u8]) -> Verdict {
    let raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Verdict::Ignore;
    }
    let Ok(value) = serde_json::from_slice::<Value>(raw) else {
        return Verdict::Answer(error(
            Value::Null,
            PARSE_ERROR,
            "parse error: the message is not JSON",
        ));
    };
    let Value::Object(message) = &value else {
        let what = if value.is_array() {
            "invalid request: batches are not supported, send one message at a time"
        } else {
            "invalid request: a message is a JSON object"
        };
        return Verdict::Answer(error(Value::Null, INVALID_REQUEST, what));
    };
    // MCP: a request id is a string or an integer, never null.
    let id = match message.get("id") {
        None => None,
        Some(id @ Value::String(_)) => Some(Ok(id.clone())),
        Some(id @ Value::Number(n)) if n.is_i64() => Some(Ok(id.clone())),
        Some(_) => Some(Err(())),
    };
    let Some(method) = message.get("method") else {
        if message.contains_key("result") || message.contains_key("error") {
            // A response to a request of ours; nobody waits for an answer to it.
            return if parses(&value) {
                Verdict::Forward
            } else {
                Verdict::Ignore
            };
        }
        let id = id.and_then(Result::ok).unwrap_or(Value::Null);
        return Verdict::Answer(error(
            id,
            INVALID_REQUEST,
            "invalid request: a message has a `method`, or a `result` or `error`",
        ));
    };
    let refuse = |code: i64, what: &str| match &id {
        Some(Ok(id)) => Verdict::Answer(error(id.clone(), code, what)),
        Some(Err(())) => Verdict::Answer(error(
            Value::Null,
            INVALID_REQUEST,
            "invalid request: `id` must be a string or an integer",
        )),
        None => Verdict::Ignore,
    };
    if message.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return refuse(
            INVALID_REQUEST,
            "invalid request: `jsonrpc` must be \"2.0\"",
        );
    }
    let Some(method) = method.as_str() else {
        return refuse(
            INVALID_REQUEST,
            "invalid request: `method` must be a string",
        );
    };
    if matches!(id, Some(Err(()))) {
        return refuse(INVALID_REQUEST, "");
    }
    if matches!(id, Some(Ok(_))) && !METHODS.contains(&method) {
        return refuse(
            METHOD_NOT_FOUND,
            &format!("method {} not found", crate::model::quote_input(method)),
        );
    }
    if message.get("params").is_some_and(|p| !p.is_object()) {
        return refuse(INVALID_PARAMS, "invalid params: `params` must be an object");
    }
    match serde_json::from_value::<ClientJsonRpcMessage>(value.clone()) {
        Ok(_) => Verdict::Forward,
        Err(e) => refuse(
            INVALID_PARAMS,
            &format!(
                "invalid params for {}: {e}",
                crate::model::quote_input(method)
            ),
        ),
    }
}

fn parses(value: &Value) -> bool {
    serde_json::from_value::<ClientJsonRpcMessage>(value.clone()).is_ok()
}

// ---- stdio -----------------------------------------------------------------------------------

/// Puts the framing between `input`/`output` (the process's stdin and stdout) and rmcp: returns
/// the reader and writer to give `serve`. Tasks move the lines; they end when `input` ends.
pub fn framed<R, W>(
    input: R,
    output: W,
) -> (
    tokio::io::ReadHalf<tokio::io::DuplexStream>,
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
)
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (from_rmcp, mut to_rmcp) = tokio::io::split(ours);
    let (lines, mut pending) = mpsc::channel::<Vec<u8>>(64);

    // One writer, so rmcp's answers and ours never interleave within a line.
    tokio::spawn(async move {
        let mut output = output;
        while let Some(mut line) = pending.recv().await {
            line.push(b'\n');
            if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
                break;
            }
        }
    });

    let answers = lines.clone();
    tokio::spawn(async move {
        let mut from_rmcp = BufReader::new(from_rmcp);
        let mut line = Vec::new();
        loop {
            line.clear();
            match from_rmcp.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = bounded_error(line.strip_suffix(b"\n").unwrap_or(&line));
                    if answers.send(text).await.is_err() {
                        break;
                    }
                }
            }
        }
    });

    tokio::spawn(async move {
        let mut input = BufReader::new(input);
        let mut line = Vec::new();
        let mut initialized = false;
        loop {
            let read = match read_bounded_line(&mut input, &mut line, MAX_MESSAGE_BYTES).await {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read stdin");
                    break;
                }
            };
            let verdict = match read {
                Line::Eof => break,
                Line::TooLong => Verdict::Answer(error(
                    Value::Null,
                    INVALID_REQUEST,
                    &format!("invalid request: a message may be at most {MAX_MESSAGE_BYTES} bytes"),
                )),
                Line::Full => check_message(&line),
            };
            match verdict {
                Verdict::Forward => {
                    // rmcp ends the session on anything but a request before `initialize`.
                    if !initialized {
                        let is_request = serde_json::from_slice::<Value>(&line)
                            .ok()
                            .is_some_and(|m| m.get("method").is_some() && m.get("id").is_some());
                        if !is_request {
                            continue;
                        }
                        initialized = is_initialize(&line);
                    }
                    let mut framed = line.clone();
                    if framed.last() != Some(&b'\n') {
                        framed.push(b'\n');
                    }
                    if to_rmcp.write_all(&framed).await.is_err() {
                        break;
                    }
                }
                Verdict::Answer(answer) => {
                    tracing::debug!(answer = %answer, "answered a malformed message");
                    if lines.send(answer.to_string().into_bytes()).await.is_err() {
                        break;
                    }
                }
                Verdict::Ignore => tracing::debug!("ignored a malformed notification or response"),
            }
        }
        // End of input: rmcp sees it and ends the session.
        let _ = to_rmcp.shutdown().await;
    });

    tokio::io::split(theirs)
}

/// rmcp's own error answers, with their message made one bounded line.
fn bounded_error(line: &[u8]) -> Vec<u8> {
    let has_error = line.windows(8).any(|w| w == b"\"error\":");
    if has_error
        && let Ok(mut v) = serde_json::from_slice::<Value>(line)
        && let Some(m) = v["error"]["message"].as_str()
    {
        v["error"]["message"] = Value::String(bound_echoes(m));
        return v.to_string().into_bytes();
    }
    line.to_vec()
}

fn is_initialize(line: &[u8]) -> bool {
    serde_json::from_slice::<Value>(line)
        .ok()
        .is_some_and(|m| m.get("method").and_then(Value::as_str) == Some("initialize"))
}

enum Line {
    Full,
    TooLong,
    Eof,
}

/// Reads one line into `buf` (cleared first) without holding more than `max` bytes of it.
async fn read_bounded_line<R: AsyncBufReadExt + Unpin>(
    input: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let available = input.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (too_long, any) {
                (true, _) => Line::TooLong,
                (false, true) => Line::Full,
                (false, false) => Line::Eof,
            });
        }
        any = true;
        let newline = available.iter().position(|b| *b == b'\n');
        let take = newline.map_or(available.len(), |i| i + 1);
        if !too_long {
            if buf.len() + take > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&available[..take]);
            }
        }
        input.consume(take);
        if newline.is_some() {
            return Ok(if too_long { Line::TooLong } else { Line::Full });
        }
    }
}

// ---- HTTP ------------------------------------------------------------------------------------

/// Middleware for `/mcp`: a malformed `POST` body is answered with its JSON-RPC error (HTTP 400;
/// 404 for an unknown method, as SEP-2575 asks),
/// or 202 when it is a notification or response; everything else goes on to rmcp.
pub async fn refuse_malformed(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_MESSAGE_BYTES).await else {
        let answer = error(
            Value::Null,
            INVALID_REQUEST,
            &format!("invalid request: a message may be at most {MAX_MESSAGE_BYTES} bytes"),
        );
        return json_response(StatusCode::PAYLOAD_TOO_LARGE, &answer);
    };
    match check_message(&bytes) {
        Verdict::Forward => {
            next.run(axum::extract::Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        // SEP-2575: an unknown method is 404 over HTTP.
        Verdict::Answer(answer) if answer["error"]["code"] == METHOD_NOT_FOUND => {
            json_response(StatusCode::NOT_FOUND, &answer)
        }
        Verdict::Answer(answer) => json_response(StatusCode::BAD_REQUEST, &answer),
        Verdict::Ignore => StatusCode::ACCEPTED.into_response(),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy as _;

    use super::*;

    fn answer(raw: &str) -> Value {
        match check_message(raw.as_bytes()) {
            Verdict::Answer(a) => a,
            other => panic!("{}: {other:?}", &raw[..raw.len().min(200)]),
        }
    }

    #[test]
    fn malformed_requests_are_answered_with_their_id() {
        let cases = [
            (
                r#"{"jsonrpc":"2.0","id":7,"method":"tools/list","params":[]}"#,
                7,
                -32602,
            ),
            (
                r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":"x"}"#,
                7,
                -32602,
            ),
            (
                r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":"x"}"#,
                0,
                -32602,
            ),
            (r#"{"jsonrpc":"2.0","id":7,"method":5}"#, 7, -32600),
            (
                r#"{"jsonrpc":"2.0","id":7,"method":"no/such\u2028"}"#,
                7,
                -32601,
            ),
            (r#"{"jsonrpc":"1.0","id":7,"method":"ping"}"#, 7, -32600),
            (r#"{"id":7,"method":"ping"}"#, 7, -32600),
            (r#"{"jsonrpc":"2.0","id":7}"#, 7, -32600),
        ];
        for (raw, id, code) in cases {
            let a = answer(raw);
            assert_eq!(a["error"]["code"], code, "{raw}: {a}");
            if id == 0 {
                assert_eq!(a["id"], "a", "{raw}: {a}");
            } else {
                assert_eq!(a["id"], id, "{raw}: {a}");
            }
        }
        for raw in [
            r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":true,"method":"ping","params":[]}"#,
            "[1,2]",
            "42",
        ] {
            let a = answer(raw);
            assert_eq!(a["id"], Value::Null, "{raw}: {a}");
            assert_eq!(a["error"]["code"], -32600, "{raw}: {a}");
        }
        let a = answer("{not json");
        assert_eq!(
            (a["id"].clone(), a["error"]["code"].clone()),
            (Value::Null, json!(-32700))
        );
    }

    #[test]
    fn well_formed_messages_pass_and_bad_notifications_are_dropped() {
        for raw in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"t","arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ] {
            assert_eq!(check_message(raw.as_bytes()), Verdict::Forward, "{raw}");
        }
        for raw in [
            r#"{"jsonrpc":"2.0","method":"notifications/initialized","params":[]}"#,
            r#"{"jsonrpc":"2.0","method":5}"#,
            "",
        ] {
            assert_eq!(check_message(raw.as_bytes()), Verdict::Ignore, "{raw}");
        }
    }

    #[test]
    fn oversized_echoes_stay_bounded() {
        let method = format!("x\u{2028}{}", "m".repeat(100_000));
        let a = error(
            json!(1),
            INVALID_PARAMS,
            &format!("invalid params for `{method}`"),
        );
        let m = a["error"]["message"].as_str().unwrap_or_default();
        assert!(m.chars().count() <= 500 && !m.contains('\u{2028}'), "{m}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        /// Issue 8: whatever arrives, a request with a valid id is forwarded or answered with
        /// that id, and every answer is one bounded line.
        #[test]
        fn every_request_with_an_id_is_forwarded_or_answered(
            value in crate::model::hostile::text(),
            slot in 0..6usize,
            id in proptest::prop_oneof![
                proptest::prelude::any::<i64>().prop_map(Value::from),
                crate::model::hostile::text().prop_map(Value::from),
            ],
        ) {
            let mut m = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": "list_identities", "arguments": {"limit": 5}}});
            match slot {
                0 => m["method"] = Value::from(value.clone()),
                1 => m["params"]["name"] = Value::from(value.clone()),
                2 => m["params"]["arguments"] = Value::from(value.clone()),
                3 => m["params"] = Value::from(value.clone()),
                4 => m["jsonrpc"] = Value::from(value.clone()),
                _ => m["params"]["arguments"]["kind"] = Value::from(value.clone()),
            }
            match check_message(m.to_string().as_bytes()) {
                Verdict::Forward => {}
                Verdict::Answer(a) => {
                    proptest::prop_assert_eq!(&a["id"], &m["id"]);
                    let text = a.to_string();
                    proptest::prop_assert!(text.len() < 4000, "{}", text);
                }
                Verdict::Ignore => proptest::prop_assert!(false, "a request was ignored: {}", m),
            }
            // The raw text itself, as a line.
            let _ = check_message(value.as_bytes());
        }
    }
}
