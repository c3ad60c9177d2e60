//! Outbox.
