-- The events of an instance after a sequence (`GET /events/{instance}?after=`: catch-up).
CREATE INDEX events_sequence ON events (instance, sequence);
