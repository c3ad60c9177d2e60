-- The claim and ordering-key indexes hold only live deliveries (ready, in flight, waiting): a
-- delivered or dead delivery leaves them. They stay as small as the backlog instead of growing with
-- every delivery kept for the delivery log, and a settlement no longer writes a page per ordering
-- key into them. Queries name the states with `state = n` (or this same OR) so SQLite can use them.
DROP INDEX deliveries_claim;
DROP INDEX deliveries_okey;
CREATE INDEX deliveries_live ON deliveries (channel, state, due_at)
    WHERE state = 0 OR state = 1 OR state = 4;
CREATE INDEX deliveries_okey ON deliveries (channel, okey, state)
    WHERE okey IS NOT NULL AND (state = 0 OR state = 1 OR state = 4);
-- Counting a channel's dead letters.
CREATE INDEX deliveries_dead_channel ON deliveries (channel) WHERE state = 3;
