//! gateway-ratelimit (being written)
