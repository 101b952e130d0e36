//! gateway-router
