//! Behaviour of the in-memory outbox.

#![allow(clippy::unwrap_used)] // test helpers

use std::sync::Arc;
use std::time::Duration;

use evolution_events::{
    Channel, CustomTarget, Destination, EventEnvelope, EventKind, InstanceName, NamingProfile, RawValue,
    Scope,
};
use evolution_outbox::{
    DeliveryQuery, MemoryOutbox, NewDelivery, NewEvent, Outbox, OutboxError, Outcome, RedriveFilter,
    Settlement, StatusFilter,
};

const CH: Channel = Channel::Nats;

fn event(instance: &str, deliveries: usize, key: Option<&str>) -> NewEvent {
    let data = RawValue::from_string("{}".to_owned()).unwrap();
    NewEvent {
        envelope: EventEnvelope::new(
            EventKind::MessagesUpsert,
            InstanceName::new(instance).unwrap(),
            data,
        ),
        profile: NamingProfile::Seed,
        deliveries: (0..deliveries)
            .map(|i| NewDelivery {
                channel: CH,
                scope: Scope::Instance,
                destination: Arc::new(Destination::Custom(CustomTarget {
                    target: format!("t{i}"),
                })),
                ordering_key: key.map(Arc::from),
            })
            .collect(),
    }
}

fn settle(id: u64, outcome: Outcome) -> Settlement {
    Settlement {
        id,
        outcome,
        attempt: None,
    }
}

fn retry(secs: u64) -> Outcome {
    Outcome::Retry {
        delay: Duration::from_secs(secs),
        error: "down".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn sequences_claims_and_settles() {
    let outbox = MemoryOutbox::new(100);
    let stored = outbox
        .enqueue(vec![
            event("a", 1, None),
            event("b", 1, None),
            event("a", 2, None),
        ])
        .await
        .unwrap();
    let seqs: Vec<u64> = stored.iter().map(|e| e.sequence()).collect();
    assert_eq!(seqs, [1, 1, 2], "per-instance sequence");
    let batch = outbox.claim(CH, 10).await.unwrap();
    assert_eq!(batch.len(), 4);
    assert!(batch.iter().all(|d| d.attempt == 1));
    assert!(
        outbox.claim(CH, 10).await.unwrap().is_empty(),
        "claimed items are not handed out twice"
    );
    let stats = outbox.stats(CH).await.unwrap();
    assert_eq!((stats.pending, stats.in_flight), (0, 4));
    outbox
        .settle(batch.iter().map(|d| settle(d.id, Outcome::Delivered)).collect())
        .await
        .unwrap();
    let stats = outbox.stats(CH).await.unwrap();
    assert_eq!((stats.pending, stats.in_flight, stats.dead), (0, 0, 0));
    assert_eq!(outbox.next_due(CH).await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_stores_nothing() {
    let outbox = MemoryOutbox::new(3);
    outbox.enqueue(vec![event("a", 2, None)]).await.unwrap();
    let err = outbox
        .enqueue(vec![event("a", 1, None), event("a", 1, None)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OutboxError::Full {
                channel: CH,
                capacity: 3
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("nothing was stored"));
    assert_eq!(outbox.stats(CH).await.unwrap().pending, 2);
    let next = outbox.enqueue(vec![event("a", 1, None)]).await.unwrap();
    assert_eq!(
        next[0].sequence(),
        2,
        "the refused events consumed no sequence number"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_wait_until_due() {
    let outbox = MemoryOutbox::new(100);
    outbox.enqueue(vec![event("a", 1, None)]).await.unwrap();
    let d = outbox.claim(CH, 10).await.unwrap().remove(0);
    outbox.settle(vec![settle(d.id, retry(5))]).await.unwrap();
    assert!(outbox.claim(CH, 10).await.unwrap().is_empty());
    assert_eq!(outbox.next_due(CH).await.unwrap(), Some(Duration::from_secs(5)));
    tokio::time::advance(Duration::from_secs(5)).await;
    let again = outbox.claim(CH, 10).await.unwrap();
    assert_eq!((again[0].id, again[0].attempt), (d.id, 2));
}

#[tokio::test(start_paused = true)]
async fn an_ordered_key_goes_one_batch_at_a_time_and_waits_for_its_head() {
    let outbox = MemoryOutbox::new(100);
    for _ in 0..5 {
        outbox.enqueue(vec![event("a", 1, Some("a/k"))]).await.unwrap();
    }
    outbox.enqueue(vec![event("b", 1, Some("b/k"))]).await.unwrap();
    let first = outbox.claim(CH, 3).await.unwrap();
    let seqs: Vec<u64> = first.iter().map(|d| d.envelope.sequence()).collect();
    assert_eq!(seqs, [1, 2, 3], "a run of one key, in order");
    let other = outbox.claim(CH, 10).await.unwrap();
    assert_eq!(other.len(), 1, "only key b is claimable while key a is in flight");
    assert_eq!(other[0].envelope.instance().as_str(), "b");
    // Head delivered, second fails, third was sent after it: requeued behind it.
    outbox
        .settle(vec![
            settle(first[0].id, Outcome::Delivered),
            settle(first[1].id, retry(10)),
            settle(first[2].id, Outcome::Requeue),
        ])
        .await
        .unwrap();
    assert!(
        outbox.claim(CH, 10).await.unwrap().is_empty(),
        "everything behind the retrying head waits"
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    let next = outbox.claim(CH, 10).await.unwrap();
    let seqs: Vec<(u64, u32)> = next.iter().map(|d| (d.envelope.sequence(), d.attempt)).collect();
    assert_eq!(
        seqs,
        [(2, 2), (3, 1), (4, 1), (5, 1)],
        "order kept; a requeue is not an attempt"
    );
}

#[tokio::test(start_paused = true)]
async fn dead_letters_and_redrive() {
    let outbox = MemoryOutbox::new(100);
    outbox.enqueue(vec![event("a", 2, Some("a/k"))]).await.unwrap();
    let batch = outbox.claim(CH, 10).await.unwrap();
    assert_eq!(batch.len(), 2);
    outbox
        .settle(vec![
            settle(
                batch[0].id,
                Outcome::Dead {
                    error: "rejected".into(),
                },
            ),
            settle(batch[1].id, Outcome::Delivered),
        ])
        .await
        .unwrap();
    let dead = outbox.dead_letters(Some(CH), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].delivery.id, dead[0].error.as_str()),
        (batch[0].id, "rejected")
    );
    assert_eq!(outbox.stats(CH).await.unwrap().dead, 1);
    let kafka = RedriveFilter {
        channel: Some(Channel::Kafka),
        ..RedriveFilter::default()
    };
    assert_eq!(outbox.redrive(&kafka).await.unwrap(), 0);
    let other = RedriveFilter {
        instance: Some(InstanceName::new("b").unwrap()),
        ..RedriveFilter::default()
    };
    assert_eq!(outbox.redrive(&other).await.unwrap(), 0);
    let log = outbox
        .deliveries(&DeliveryQuery {
            instance: None,
            channel: None,
            status: Some(StatusFilter::Dead),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!((log.len(), log[0].last_error.as_deref()), (1, Some("rejected")));
    let one = RedriveFilter {
        ids: vec![batch[0].id],
        ..RedriveFilter::default()
    };
    assert_eq!(outbox.redrive(&one).await.unwrap(), 1);
    let again = outbox.claim(CH, 10).await.unwrap();
    assert_eq!((again.len(), again[0].id, again[0].attempt), (1, batch[0].id, 1));
    assert!(outbox.dead_letters(None, 10).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn release_returns_in_flight_work() {
    let outbox = MemoryOutbox::new(100);
    outbox
        .enqueue(vec![event("a", 2, None), event("a", 2, Some("k"))])
        .await
        .unwrap();
    assert_eq!(outbox.claim(CH, 10).await.unwrap().len(), 4);
    outbox.release(CH).await.unwrap();
    let stats = outbox.stats(CH).await.unwrap();
    assert_eq!((stats.pending, stats.in_flight), (4, 0));
    let again = outbox.claim(CH, 10).await.unwrap();
    assert_eq!(again.len(), 4);
    assert!(
        again.iter().all(|d| d.attempt == 1),
        "a release is not an attempt"
    );
}

#[tokio::test(start_paused = true)]
async fn enqueue_wakes_waiting_workers() {
    let outbox = Arc::new(MemoryOutbox::new(100));
    let notify = outbox.notifier(CH);
    let waiter = tokio::spawn(async move { notify.notified().await });
    tokio::task::yield_now().await;
    outbox.enqueue(vec![event("a", 1, None)]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn recent_events_can_be_looked_up_by_id() {
    let outbox = MemoryOutbox::new(100).with_event_history(2);
    let stored = outbox
        .enqueue(vec![
            event("a", 1, None),
            event("a", 0, None),
            event("b", 1, None),
        ])
        .await
        .unwrap();
    let a = InstanceName::new("a").unwrap();
    let b = InstanceName::new("b").unwrap();
    // The oldest of three is forgotten with a history of 2.
    assert!(outbox.event(&a, stored[0].id()).await.unwrap().is_none());
    let found = outbox.event(&a, stored[1].id()).await.unwrap().unwrap();
    assert_eq!(found.envelope.id(), stored[1].id());
    assert_eq!(found.envelope.sequence(), 2);
    assert_eq!(found.payload(), stored[1].payload(NamingProfile::Seed));
    // Only under its own instance.
    assert!(outbox.event(&b, stored[1].id()).await.unwrap().is_none());
    assert!(outbox.event(&b, stored[2].id()).await.unwrap().is_some());
    // Still there once delivered.
    let claimed = outbox.claim(CH, 10).await.unwrap();
    outbox
        .settle(claimed.iter().map(|d| settle(d.id, Outcome::Delivered)).collect())
        .await
        .unwrap();
    assert!(outbox.event(&b, stored[2].id()).await.unwrap().is_some());
}
