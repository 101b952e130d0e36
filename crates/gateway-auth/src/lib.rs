//! gateway-auth (being written)
