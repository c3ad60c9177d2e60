//! The **Amazon SQS** sink of evolution events: sends each event as an SQS message to the queue its
//! [`Delivery`](evolution_events::Delivery) names
//! ([`Destination::Sqs`](evolution_events::Destination::Sqs)), with
//! [aws-sdk-sqs](https://docs.rs/aws-sdk-sqs), to AWS or any SQS-compatible server.
//!
//! ```no_run
//! use std::sync::Arc;
//! use evolution_events::EventSink;
//! use evolution_sink_sqs::{SqsConfig, SqsCredentials, SqsSink};
//!
//! # fn main() -> Result<(), evolution_events::SinkError> {
//! let sink: Arc<dyn EventSink> = Arc::new(SqsSink::new(SqsConfig {
//!     credentials: Some(SqsCredentials::new("AKIA…", "secret")), // SQS_ACCESS_KEY_ID, SQS_SECRET_ACCESS_KEY
//!     ..SqsConfig::new("sa-east-1") // SQS_REGION
//! })?);
//! # Ok(()) }
//! ```
//!
//! # Configuration
//!
//! | [`SqsConfig`] field | variable (server) | default |
//! |---|---|---|
//! | `region` | `SQS_REGION` | required |
//! | `credentials` | `SQS_ACCESS_KEY_ID` + `SQS_SECRET_ACCESS_KEY` | none: the AWS default chain (`AWS_*` variables, profile, web identity, container or instance role) |
//! | `endpoint` | `SQS_ENDPOINT` (our addition) | AWS's endpoint of the region |
//! | `account_id` | `SQS_ACCOUNT_ID` | the caller's account (queue owner given to `GetQueueUrl`) |
//! | `max_payload_bytes` | `SQS_MAX_PAYLOAD_SIZE` | 1 048 576 (SQS's limit) |
//! | `connect_timeout`, `operation_timeout` | — | 5 s, 20 s |
//!
//! The server also reads `SQS_ENABLED`, `SQS_GLOBAL_ENABLED`, `SQS_GLOBAL_<EVENT>`,
//! `SQS_GLOBAL_FORCE_SINGLE_QUEUE`, `SQS_PREFIX_KEY` and `SQS_FIFO`, which decide the queue names
//! (the Router's job, not the sink's). The SDK's own retries are off (the dispatcher retries).
//! The secret access key is [`Sensitive`](evolution_events::Sensitive): never in `Debug`, logs or
//! errors. IAM permissions used: `sqs:SendMessage`, `sqs:GetQueueUrl`, `sqs:CreateQueue` (to create
//! missing queues), `sqs:ListQueues` (health check).
//!
//! # Wire format
//!
//! ```text
//! queue    <Destination::Sqs.queue>   seed: evolution-{instance}-{event-kebab} (.fifo with SQS_FIFO),
//!                                     evolution-global with SQS_GLOBAL_FORCE_SINGLE_QUEUE
//! body     <Delivery::payload() text: {"id","event","instance","data","date_time",...};
//!           evolution-v2: Evolution API's, with "dataType":"json" and "server">
//! message attributes (String)
//!          event    = the payload's `event` (MESSAGES_UPSERT in the seed profile)
//!          instance = the instance name
//!          id       = the event id (UUIDv7): the idempotency key
//! FIFO queues only
//!          MessageGroupId         = <Destination::Sqs.group_id>: the instance (its events are
//!                                   consumed in order); evolution-v2: Evolution API's groups
//!                                   (`evolution`, `<SERVER_NAME>-<event>-<instance>` globally)
//!          MessageDeduplicationId = the event id: a retry within SQS's 5-minute window is dropped
//!                                   by SQS itself (Evolution API used the time in milliseconds:
//!                                   two events in one millisecond lost the second)
//! ```
//!
//! # Queues
//!
//! A queue's URL is resolved through the API (`GetQueueUrl`, never built by hand) once and
//! cached. A queue that does not exist is created (`CreateQueue`: `FifoQueue=true` for `.fifo`
//! names, `MaximumMessageSize` = the payload limit); one that exists with other attributes is used
//! as it is. [`prepare`](evolution_events::EventSink::prepare) does this when an instance's settings
//! are saved. When a send answers "queue does not exist" (deleted, or an SQS-compatible server that
//! lost its queues on restart), the sink creates the queue again and resends that call once.
//!
//! # Batches, size, order
//!
//! [`Capabilities`](evolution_events::Capabilities): batches of up to 100 items, ordered. Payloads
//! up to `max_payload_bytes` − 256 (room for the attributes); an item counts as delivered once
//! SQS accepted it. The items of one
//! queue go out with `SendMessageBatch` in calls of at most 10 entries whose sizes add up to at
//! most the payload limit, one call after another in batch order; different queues concurrently.
//! Each entry SQS reports failed fails its own item; after a call or entry that failed retryably,
//! the later items of that queue are reported "not sent" (retryable), so nothing overtakes a
//! failed event ([`send_in_order`](evolution_events::send_in_order)). An
//! event over the size limit is rejected alone with a message giving both sizes: never dropped
//! silently (Evolution API drops it with a log line unless S3 offload is configured; offloading to
//! S3 is not supported here). Order holds end to end on FIFO queues (per instance); a standard
//! queue receives in order but SQS may hand messages out of order.
//!
//! # Classification
//!
//! | outcome | kind | retry |
//! |---|---|---|
//! | `QueueDoesNotExist` (after one re-creation), `QueueDeletedRecently` | `Unavailable` | `Backoff` |
//! | `RequestThrottled`, `ThrottlingException`, `OverLimit`, `KmsThrottled` | `RateLimited` | `Backoff` |
//! | `InvalidClientTokenId`, `SignatureDoesNotMatch`, `AccessDenied`, `InvalidSecurity`, `KmsAccessDenied` | `Unauthorized` | `Backoff` |
//! | `KmsDisabled`, `KmsNotFound`, `KmsInvalidState`, … | `ConfigInvalid` | `Backoff` |
//! | `InvalidParameterValue`, `InvalidMessageContents`, `MessageTooLong`, `BatchRequestTooLong`, … ; over the size limit | `Rejected` | `Never` |
//! | `InternalError`, `ServiceUnavailable`; connection refused or reset, DNS, TLS; unreadable answer | `Unavailable` | `Backoff` |
//! | no answer within the timeouts | `Timeout` | `Backoff` |
//! | another code of a failed entry: `SenderFault` true / false | `Rejected` / `Unavailable` | `Never` / `Backoff` |
//! | another code of a failed call | `Unexpected` | `Backoff` |
//! | a request that cannot be built, a destination of another channel | `ConfigInvalid` | `Never` |
//!
//! Errors carry the HTTP status of a failed call and name the operation and the queue
//! (`sending to queue "evolution-acme-call" failed: …`).
//!
//! # Health, flush, shutdown
//!
//! `health_check` calls `ListQueues` (one result). `flush` has nothing to do (every `send` waits
//! for SQS's answer). `shutdown` is idempotent and drops the client; afterwards `send`,
//! `health_check` and `flush` fail with `Closed`.

mod classify;
mod config;
mod sink;

pub use config::{SqsConfig, SqsCredentials};
pub use sink::{NAME, SqsSink};
