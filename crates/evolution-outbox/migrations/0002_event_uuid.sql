-- Looking an accepted event up by its id (`GET /events/{instance}/{id}`).
CREATE INDEX events_uuid ON events (uuid);
