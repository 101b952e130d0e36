use std::sync::Arc;

/// Who a request comes from, once an authentication provider accepted it. Travels as a
/// typed request extension; rate limits (`claim:`, `consumer`) and header transforms read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The `[auth.NAME]` that accepted the credentials.
    pub provider: Arc<str>,
    /// The JWT `sub`, or the API key's consumer.
    pub subject: Option<String>,
    /// The API key's consumer name (`x-consumer` upstream).
    pub consumer: Option<String>,
    /// The verified JWT claims (empty for API keys).
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl Principal {
    /// A claim as text: strings as they are, numbers and booleans printed; `None` for
    /// absent claims and for objects or arrays.
    pub fn claim_str(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        match self.claims.get(name)? {
            serde_json::Value::String(s) => Some(std::borrow::Cow::Borrowed(s)),
            serde_json::Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
            serde_json::Value::Bool(b) => Some(std::borrow::Cow::Owned(b.to_string())),
            _ => None,
        }
    }
}
