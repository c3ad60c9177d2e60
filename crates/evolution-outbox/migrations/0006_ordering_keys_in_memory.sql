-- The writer keeps the live deliveries of every ordering key in memory (ADR 0027): the index on
-- (channel, okey, state) had one region per key, so each commit storing events of many instances
-- wrote one of its pages per instance. Loading the keys at start reads `deliveries_live`.
DROP INDEX deliveries_okey;
