//! gateway-admin
