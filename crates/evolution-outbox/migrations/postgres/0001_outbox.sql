-- The PostgreSQL outbox and instance store of evolution events, in a schema of its own (the
-- connection's search_path). Times are milliseconds since the Unix epoch (UTC), from the
-- database's clock, so that every replica compares due times against the same clock.

-- Instances and their channel settings (the Store).
CREATE TABLE instances (
    id         TEXT   NOT NULL PRIMARY KEY,   -- UUID (`instanceId`)
    name       TEXT   NOT NULL UNIQUE,
    token      TEXT   NOT NULL UNIQUE,        -- the instance's API token
    settings   TEXT   NOT NULL,               -- JSON of InstanceSettings
    created_at BIGINT NOT NULL
);

-- The last sequence number given to an event of each instance (kept when the instance is deleted).
-- Its row lock orders the ingest of one instance across replicas.
CREATE TABLE sequences (
    instance TEXT   NOT NULL PRIMARY KEY,
    last     BIGINT NOT NULL
);

-- Accepted events, kept while any of their deliveries is kept.
CREATE TABLE events (
    id         BIGSERIAL NOT NULL PRIMARY KEY,
    uuid       TEXT      NOT NULL,            -- the event's id (UUIDv7)
    instance   TEXT      NOT NULL,
    kind       TEXT      NOT NULL,            -- filter key: MESSAGES_UPSERT
    data       TEXT      NOT NULL,            -- raw JSON, as given
    date_time  BIGINT    NOT NULL,
    sender     TEXT,
    server_url TEXT,
    apikey     TEXT,
    sequence   BIGINT    NOT NULL,
    profile    TEXT      NOT NULL             -- naming profile: seed | evolution-v2
);
CREATE INDEX events_uuid ON events (uuid);

-- One row per event and destination; `state` as in the SQLite outbox:
-- 0 ready, 1 in flight (claimed by the replica `owner`), 2 delivered, 3 dead, 4 waiting.
CREATE TABLE deliveries (
    id          BIGSERIAL NOT NULL PRIMARY KEY,  -- never reused; enqueue order
    event_id    BIGINT    NOT NULL,
    channel     TEXT      NOT NULL,
    scope       TEXT      NOT NULL,              -- instance | global
    destination TEXT      NOT NULL,              -- JSON of Destination
    okey        TEXT,                            -- ordering key; NULL: unordered
    state       BIGINT    NOT NULL,
    attempts    BIGINT    NOT NULL DEFAULT 0,
    due_at      BIGINT    NOT NULL,
    last_error  TEXT,
    updated_at  BIGINT    NOT NULL,
    owner       TEXT                             -- the replica that claimed it (in flight only)
);
-- Claims and next_due: ready deliveries of a channel by due time (then id).
CREATE INDEX deliveries_claim ON deliveries (channel, due_at, id) WHERE state = 0;
-- Ordering keys: the head of a key (its oldest pending delivery) and the run behind it.
CREATE INDEX deliveries_okey_pending ON deliveries (channel, okey, id) WHERE state IN (0, 4) AND okey IS NOT NULL;
-- The ready head of each key (one row per key at most): re-arming a key finds it without reading
-- the key's waiting run.
CREATE INDEX deliveries_okey_ready ON deliveries (channel, okey) WHERE state = 0 AND okey IS NOT NULL;
-- In flight: whether a key is busy, a replica's claims, lease expiry.
CREATE INDEX deliveries_in_flight ON deliveries (channel, okey) WHERE state = 1;
-- Pruning events, replay, and the delivery log by instance.
CREATE INDEX deliveries_event ON deliveries (event_id);
-- Pruning delivered deliveries.
CREATE INDEX deliveries_delivered ON deliveries (updated_at) WHERE state = 2;
-- Dead letters, oldest first.
CREATE INDEX deliveries_dead ON deliveries (updated_at, id) WHERE state = 3;
-- Every query has exactly one index that fits it (state in each predicate), so that a plan made
-- before the table has statistics (a fresh schema filling up fast, a connection's cached generic
-- plan) still picks it: counts per channel add up the ready, waiting and in-flight indexes above.
-- Delivery rows are updated two or three times each and pruned later: vacuum and analyze early.
ALTER TABLE deliveries SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);

-- Every attempt of every delivery (the delivery log).
CREATE TABLE attempts (
    id          BIGSERIAL NOT NULL PRIMARY KEY,
    delivery_id BIGINT    NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt     BIGINT    NOT NULL,           -- from 1 (again from 1 after a redrive)
    at          BIGINT    NOT NULL,
    outcome     TEXT      NOT NULL,           -- delivered | retry | dead
    status      BIGINT,                       -- protocol (HTTP) status
    error       TEXT,
    latency_ms  BIGINT    NOT NULL
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);

-- The replicas working on this schema: each renews its heartbeat; the deliveries in flight of one
-- whose heartbeat is older than the lease go back to pending (any replica sweeps them).
CREATE TABLE replicas (
    id           TEXT   NOT NULL PRIMARY KEY,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

-- Settings the replicas share (the generated global API key).
CREATE TABLE shared_settings (
    name  TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
