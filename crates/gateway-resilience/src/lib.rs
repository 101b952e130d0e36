//! gateway-resilience (being written)
