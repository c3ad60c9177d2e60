-- The events of an instance after a sequence (`GET /events/{instance}?after=`: catch-up).
CREATE INDEX IF NOT EXISTS events_sequence ON events (instance, sequence);
