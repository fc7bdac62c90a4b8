//! AWS plumbing shared by the `aws_iam` provider and the Secrets Manager sink: the SDK
//! configuration both are built on, and what an SDK error says without anything secret.

use std::time::Duration;

use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use crate::config::AwsEndpoint;

/// The SDK configuration for `endpoint`: the standard credential chain, rustls with ring,
/// bounded timeouts and the SDK's standard retries (3 attempts).
pub async fn sdk_config(endpoint: &AwsEndpoint) -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls;
    let timeout = endpoint.timeout.unwrap_or(Duration::from_secs(25));
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(timeout.min(Duration::from_secs(10)))
                .operation_timeout(timeout)
                .build(),
        )
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
    if let Some(region) = &endpoint.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &endpoint.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(profile) = &endpoint.profile {
        loader = loader.profile_name(profile);
    }
    loader.load().await
}

/// What an SDK error says, without anything secret: the operation, AWS's error code and
/// message (which name resources, never credentials), or the transport failure.
pub fn describe_sdk_error<E>(op: &str, e: &SdkError<E, HttpResponse>) -> (String, bool)
where
    E: ProvideErrorMetadata,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let transient = match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        _ => {
            status.is_some_and(|s| s >= 500 || s == 429)
                || matches!(e.code(), Some("Throttling" | "ServiceFailure"))
        }
    };
    let message = match (e.code(), e.message()) {
        (Some(code), Some(msg)) => format!("{op}: {code}: {}", one_line(msg)),
        (Some(code), None) => format!("{op}: {code}"),
        _ => match e {
            SdkError::TimeoutError(_) => format!("{op}: no answer in time"),
            SdkError::DispatchFailure(_) => format!("{op}: could not reach the endpoint"),
            _ => match status {
                Some(s) => format!("{op}: failed with HTTP {s}"),
                None => format!("{op}: failed"),
            },
        },
    };
    (message, transient)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
