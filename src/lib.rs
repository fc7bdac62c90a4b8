//! nhi-mcp: an MCP server that lets AI agents govern non-human identities under human approval.
//!
//! The crate is laid out along the request flow; `ARCHITECTURE.md` is the map.

pub mod audit;
pub mod auth;
pub mod authz;
pub mod cli;
pub mod config;
pub mod engine;
pub mod http;
pub mod mcp;
pub mod model;
pub mod ports;
pub mod providers;
pub mod store;
