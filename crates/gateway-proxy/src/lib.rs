//! gateway-proxy
