//! Sinks facade.
