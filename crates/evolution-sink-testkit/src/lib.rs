//! The shared **contract suite** every evolution events sink runs against a real server, and
//! [`MemorySink`], the in-memory reference sink (with failure injection) used to test the
//! dispatcher.
//!
//! A sink crate adds this crate as a dev-dependency, implements [`ContractFixture`] (the sink
//! connected to a real server, plus a probe that reads what reached the wire) and expands
//! [`contract_suite!`] in an integration test, which gives one `#[test]` per case of [`cases`]:
//!
//! ```ignore
//! use evolution_sink_testkit::{Skip, contract_suite}; // tests/contract.rs of a sink crate
//! async fn rabbitmq() -> Result<RabbitFixture, Skip> { // RabbitFixture: ContractFixture
//!     let uri = std::env::var("EVOLUTION_TEST_RABBITMQ_URI").map_err(|_| Skip::new("set EVOLUTION_TEST_RABBITMQ_URI=amqp://guest:guest@127.0.0.1:5672/%2f"))?;
//!     RabbitFixture::connect(&uri).await.map_err(|e| Skip::new(format!("RabbitMQ at {uri}: {e}")))
//! }
//! contract_suite!(rabbitmq);
//! ```
//!
//! Without a server the cases are skipped (`skipped: …` on stderr), except in CI (`CI=true`) or
//! with `EVOLUTION_CONTRACT_STRICT=1`, where an unavailable fixture fails them (see [`require`]).
//! A case that the sink's capabilities exclude passes and says so on stderr: `contract case
//! `keeps_order`: skipped (not ordered)`, `… skipped (no payload limit)`.
//! The suite runs against [`MemoryFixture`] in this crate's own tests.

pub mod bench;
pub mod cases;
mod contract;
pub mod fixtures;
pub mod memory;
pub mod node;
pub mod reconnect;

pub use contract::{ContractFixture, Observed, Skip, require};
pub use memory::{MemoryFixture, MemorySink, Received};

#[doc(hidden)]
pub use contract::run_case as __run_case;
#[doc(hidden)]
pub use tokio;

/// Expands to `mod contract { … }` (test builds only) holding one `#[test]` per contract case,
/// each running the case on a multi-threaded runtime (2 workers) against a fixture built by
/// `$fixture`, a path to an `async fn() -> Result<F, Skip>` with `F: ContractFixture`.
///
/// A sink crate needs only this crate as a dev-dependency (no `tokio` of its own for the suite).
#[macro_export]
macro_rules! contract_suite {
    ($fixture:path) => {
        $crate::__contract_suite!(
            $fixture;
            delivers_one,
            delivers_batch,
            keeps_order,
            empty_batch_is_noop,
            oversize_item_rejected_per_item,
            unreachable_is_retryable,
            health_check_up_and_down,
            flush_makes_sent_visible,
            shutdown_is_idempotent,
            concurrent_senders,
            unicode_and_near_limit_payloads,
            same_id_on_redelivery,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __contract_suite {
    ($fixture:path; $($case:ident),* $(,)?) => {
        /// Resolves `$fixture` where the macro was invoked (a plain name would not resolve inside
        /// `mod contract`).
        #[cfg(test)]
        async fn __evolution_contract_fixture()
        -> ::core::result::Result<impl $crate::ContractFixture, $crate::Skip> {
            $fixture().await
        }

        #[cfg(test)]
        mod contract {
            $(
                #[test]
                fn $case() {
                    $crate::__run_case(async {
                        if let ::core::option::Option::Some(fx) =
                            $crate::require(super::__evolution_contract_fixture().await)
                        {
                            $crate::cases::$case(&fx).await;
                        }
                    });
                }
            )*
        }
    };
}
