//! The one mapping from engine errors to what an MCP client sees.
//!
//! - Malformed arguments → a tool result with `isError`, like rmcp's own answer for arguments
//!   that do not parse: since MCP 2025-11-25 (SEP-1303) input validation errors are tool
//!   execution errors, so that the model reads them and corrects its call.
//! - Anything else the agent can read and act on (not found, missing scope, refused token, provider
//!   said no) → a tool result with `isError` and one clear sentence.
//! - Internal failures → logged with detail; the agent gets a short, vague sentence.

use rmcp::ErrorData;
use rmcp::handler::server::tool::IntoCallToolResult;
use rmcp::model::{CallToolResponse, CallToolResult, ContentBlock};

use crate::engine::EngineError;

#[derive(Debug)]
pub enum ToolError {
    InvalidParams(String),
    Agent(String),
    Internal,
}

impl From<EngineError> for ToolError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::InvalidArgument(m) => Self::InvalidParams(m),
            EngineError::Internal(detail) => {
                tracing::error!(%detail, "internal error answered vaguely");
                Self::Internal
            }
            other => Self::Agent(other.to_string()),
        }
    }
}

impl IntoCallToolResult for ToolError {
    fn into_call_tool_result(self) -> Result<CallToolResponse, ErrorData> {
        match self {
            Self::InvalidParams(m) | Self::Agent(m) => {
                Ok(CallToolResult::error(vec![ContentBlock::text(m)]).into())
            }
            Self::Internal => Ok(CallToolResult::error(vec![ContentBlock::text(
                "internal error; the server log has the details",
            )])
            .into()),
        }
    }
}
