//! Providers: one connected system each (an inventory file, an AWS account, a database).
//!
//! The trait has a small required core (`list`, `get`) and optional capabilities (planning and
//! applying rotations and revocations) that default to "unsupported". Providers know nothing of
//! MCP, HTTP or the store.

pub mod aws;
pub mod aws_iam;
#[cfg(test)]
mod conformance;
pub mod inventory;
pub mod postgres;
pub mod sink;

pub use crate::ports::{Provider, ProviderError, StepResult};
