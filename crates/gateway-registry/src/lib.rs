//! gateway-registry
