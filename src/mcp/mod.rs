//! The only module that knows MCP types: the eight tools, their argument and result shapes, the
//! per-caller tool list, and the one mapping from engine errors to MCP answers.

mod errors;
mod tools;

pub use errors::ToolError;
pub use tools::{NhiServer, TOOL_SCOPES, export_tools, tool_call_scopes};
