//! Integration tests: one binary, one module per area. Every MCP test drives the real
//! `nhi-mcp` binary through a real client (rmcp over stdio and Streamable HTTP, the Python SDK,
//! the MCP conformance suite).

mod common;

mod audit;
mod aws;
mod bad_input;
mod contract;
mod crash;
mod fuzz;
mod http;
mod interop;
mod oauth;
mod policy;
mod postgres;
mod properties;
mod refusals;
mod scopes;
mod secrets;
mod workflow;
