//! The PostgreSQL outbox against the real server (`EVOLUTION_TEST_POSTGRES`, default
//! `postgresql://postgres@127.0.0.1:5432/postgres`; `scripts/services` starts or verifies it): the
//! contract suite, each case in a schema of its own, plus what only it does — several replicas on
//! one schema (exclusive claims, one batch of a key in flight in the cluster, gap-free sequences,
//! leases of a replica that is gone, notifications), migrations racing, and start-up errors.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)] // test helpers

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use evolution_events::{InstanceName, InstanceSettings, Sensitive, Uuid};
use evolution_outbox::testing::{CHANNEL as CH, OutboxFixture, new_event, settlement};
use evolution_outbox::{
    InstanceRecord, Outbox, OutboxError, Outcome, PostgresOptions, PostgresOutbox, Store, outbox_contract_suite,
};

/// The database the tests use.
fn url() -> String {
    std::env::var("EVOLUTION_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A schema name no other test (of this or another run) uses.
fn fresh_schema(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    format!(
        "test_{name}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A schema, dropped (with everything in it) when the value is dropped.
struct Schema(String);

impl Schema {
    fn new(name: &str) -> Self {
        Self(fresh_schema(name))
    }

    fn options(&self, replica: &str) -> PostgresOptions {
        PostgresOptions {
            schema: self.0.clone(),
            replica: Some(replica.to_owned()),
            delivered_retention: Duration::ZERO,
            lease: Duration::from_millis(800),
            max_connections: 4,
            ..PostgresOptions::default()
        }
    }

    async fn open(&self, replica: &str) -> PostgresOutbox {
        PostgresOutbox::open(&url(), self.options(replica)).await.unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        // A runtime of its own: the test's may be shutting down.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url()).await.ok()?;
                sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop the test schema {}", self.0);
        }
    }
}

/// A fresh schema per case; one replica name, so that `reopen` recovers its in-flight work at once
/// (as a restarted process of a stable replica would).
struct PostgresFixture {
    schema: Schema,
    capacity: AtomicUsize,
}

impl PostgresFixture {
    async fn open_schema(&self) -> Arc<PostgresOutbox> {
        let options = PostgresOptions {
            capacity: self.capacity.load(Ordering::Relaxed),
            ..self.schema.options("fixture")
        };
        Arc::new(PostgresOutbox::open(&url(), options).await.unwrap())
    }
}

impl OutboxFixture for PostgresFixture {
    type Outbox = PostgresOutbox;

    async fn setup() -> Self {
        Self {
            schema: Schema::new("contract"),
            capacity: AtomicUsize::new(0),
        }
    }

    async fn open(&self, capacity: usize) -> Arc<PostgresOutbox> {
        self.capacity.store(capacity, Ordering::Relaxed);
        self.open_schema().await
    }

    /// Drops the outbox without closing it, as a process that ends, and opens the schema again
    /// under the same replica name.
    async fn reopen(&self, outbox: Arc<PostgresOutbox>) -> Option<Arc<PostgresOutbox>> {
        let outbox = Arc::try_unwrap(outbox).expect("the case holds no other handle to the outbox");
        drop(outbox);
        Some(self.open_schema().await)
    }

    fn keeps_history(&self) -> bool {
        true
    }

    async fn prune(&self, outbox: &PostgresOutbox) -> Result<usize, OutboxError> {
        // Settled in an earlier millisecond than the prune's cutoff.
        tokio::time::sleep(Duration::from_millis(2)).await;
        outbox.prune(Duration::ZERO).await
    }
}

outbox_contract_suite!(contract, PostgresFixture);
