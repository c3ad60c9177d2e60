-- The W3C trace context of each event (its ingest span's `traceparent` and the `tracestate`),
-- carried on every delivery; NULL for events accepted without one.
ALTER TABLE events ADD COLUMN traceparent TEXT;
ALTER TABLE events ADD COLUMN tracestate TEXT;
-- The format its deliveries are written in (`evolution`, `cloudevents`,
-- `cloudevents-structured`); NULL for events accepted before formats existed (evolution).
ALTER TABLE events ADD COLUMN format TEXT;
