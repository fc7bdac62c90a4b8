//! Integration tests: one binary, one module per area. Every MCP test drives the real
//! `nhi-mcp` binary through a real client (rmcp over stdio and Streamable HTTP, the Python SDK,
//! the MCP conformance suite).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a failed step in a test is the test's failure"
)]

mod common;

mod audit;
mod aws;
mod bad_input;
mod cli;
mod concurrency;
mod contract;
mod crash;
mod device;
mod files;
mod fuzz;
mod http;
mod interop;
mod layering;
mod oauth;
mod policy;
mod postgres;
mod principals;
mod properties;
mod readme;
mod refusals;
mod scopes;
mod secrets;
mod workflow;
