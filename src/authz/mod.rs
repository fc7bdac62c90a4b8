//! Authorization: who may call what (scopes), what policy lets them do to which identity
//! (Cedar), and the approval tokens that authorize one change.

pub mod approval;
pub mod approvers;
pub mod policy;
pub mod principal_id;
pub mod scopes;

pub use approval::{ApprovalClaims, ApprovalKey, TokenError};
pub use policy::{Policy, PolicyAction, PolicyDecision, PolicyError};
pub use scopes::{Principal, Scope};
