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

/// mimalloc instead of the system allocator, for every binary built on this crate (the
/// server, its tests and benchmarks alike): an inventory is millions of small strings, and
/// mimalloc's size classes and per-page metadata cost less per string than glibc's 16-byte
/// aligned chunks with an 8-byte header each.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
