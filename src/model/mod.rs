//! Plain data of the domain: identities, credentials, findings, proposals. No I/O, no MCP, no SQL.

pub mod canonical;
pub mod finding;
pub mod identity;
pub mod ids;
pub mod proposal;
pub mod secret;

pub use finding::{Finding, FindingRule, Severity, Thresholds};
pub use identity::{
    Credential, CredentialKind, CredentialStatus, Identity, IdentityKind, Permissions,
};
pub use ids::{CredentialId, IdentityId, InvalidInput, ProposalId, ProviderName};
pub use proposal::{Action, PlanStep, Proposal, ProposalBody, ProposalStatus, StepAction};
pub use secret::Secret;

/// Renders user input for an error message: in backticks, control characters escaped, cut at 64
/// characters, so a hostile string cannot forge log lines or flood a message.
pub fn quote_input(input: &str) -> String {
    let mut out = String::from("`");
    for (i, c) in input.chars().enumerate() {
        if i == 64 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('`');
    out
}
