//! The only module that knows MCP types: the eight tools, their argument and result shapes, the
//! per-caller tool list, and the one mapping from engine errors to MCP answers.

mod errors;
mod framing;
mod tools;

pub use errors::ToolError;
pub use framing::{MAX_MESSAGE_BYTES, Verdict, check_message, framed, refuse_malformed};
pub use tools::{NhiServer, TOOL_SCOPES, export_tools, tool_call_scopes};
