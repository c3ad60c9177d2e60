//! Contract suite and reference sink.
