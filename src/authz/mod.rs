//! Authorization: who may call what (scopes) and the approval tokens that authorize one change.

pub mod approval;
pub mod scopes;

pub use approval::{ApprovalClaims, ApprovalKey, TokenError};
pub use scopes::{Principal, Scope};
