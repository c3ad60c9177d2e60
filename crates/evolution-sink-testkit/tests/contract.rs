//! The contract suite, run against the in-memory reference sink.

use evolution_sink_testkit::{MemoryFixture, Skip, contract_suite};

async fn memory_fixture() -> Result<MemoryFixture, Skip> {
    Ok(MemoryFixture::new())
}

contract_suite!(memory_fixture);
