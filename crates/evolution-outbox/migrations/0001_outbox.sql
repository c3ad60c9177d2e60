-- The SQLite outbox and instance store of evolution events.
-- Times are milliseconds since the Unix epoch (UTC).

-- Instances and their channel settings (the Store).
CREATE TABLE instances (
    id         TEXT    NOT NULL PRIMARY KEY,  -- UUID (`instanceId`)
    name       TEXT    NOT NULL UNIQUE,
    token      TEXT    NOT NULL UNIQUE,       -- the instance's API token
    settings   TEXT    NOT NULL,              -- JSON of InstanceSettings
    created_at INTEGER NOT NULL
);

-- The last sequence number given to an event of each instance (kept when the instance is deleted).
CREATE TABLE sequences (
    instance TEXT    NOT NULL PRIMARY KEY,
    last     INTEGER NOT NULL
) WITHOUT ROWID;

-- Accepted events, kept while any of their deliveries is kept. No foreign key to `instances`:
-- the events of a deleted instance are still delivered.
CREATE TABLE events (
    id         INTEGER NOT NULL PRIMARY KEY,  -- internal row id
    uuid       TEXT    NOT NULL,              -- the event's id (UUIDv7)
    instance   TEXT    NOT NULL,
    kind       TEXT    NOT NULL,              -- filter key: MESSAGES_UPSERT
    data       TEXT    NOT NULL,              -- raw JSON, as given
    date_time  INTEGER NOT NULL,
    sender     TEXT,
    server_url TEXT,
    apikey     TEXT,
    sequence   INTEGER NOT NULL,
    profile    TEXT    NOT NULL               -- naming profile: seed | evolution-v2
);

-- One row per event and destination.
-- state: 0 ready (pending and claimable once due: unordered, or the head of an ordering key with
--          nothing of that key in flight)
--        1 in flight
--        2 delivered (kept for the delivery log, then pruned)
--        3 dead
--        4 waiting (pending behind the head of its ordering key, or while the key is in flight)
CREATE TABLE deliveries (
    id          INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,  -- never reused
    event_id    INTEGER NOT NULL REFERENCES events (id),
    channel     TEXT    NOT NULL,
    scope       TEXT    NOT NULL,             -- instance | global
    destination TEXT    NOT NULL,             -- JSON of Destination
    okey        TEXT,                         -- ordering key; NULL: unordered
    state       INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    due_at      INTEGER NOT NULL,
    last_error  TEXT,
    updated_at  INTEGER NOT NULL
);

-- Claims and next_due: ready deliveries of a channel by due time (then id).
CREATE INDEX deliveries_claim ON deliveries (channel, state, due_at);
-- Ordering keys: heads, runs and in-flight checks.
CREATE INDEX deliveries_okey ON deliveries (channel, okey, state) WHERE okey IS NOT NULL;
-- Pruning events, and the foreign key check when events are deleted.
CREATE INDEX deliveries_event ON deliveries (event_id);
-- Pruning delivered deliveries.
CREATE INDEX deliveries_delivered ON deliveries (updated_at) WHERE state = 2;
-- Dead letters, oldest first.
CREATE INDEX deliveries_dead ON deliveries (updated_at) WHERE state = 3;

-- Every attempt of every delivery (the delivery log).
CREATE TABLE attempts (
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,             -- from 1 (again from 1 after a redrive)
    at          INTEGER NOT NULL,
    outcome     TEXT    NOT NULL,             -- delivered | retry | dead
    status      INTEGER,                      -- protocol (HTTP) status
    error       TEXT,
    latency_ms  INTEGER NOT NULL
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);
