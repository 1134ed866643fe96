-- Which API handled each call: 'realtime' or 'live'. The calls recorded before knew only
-- the Realtime API. The default also serves the previous release during a rolling update
-- (its writes do not name the column).
ALTER TABLE calls ADD COLUMN api text NOT NULL DEFAULT 'realtime';
-- No index of its own: a filter by API reads calls_by_start newest first, and a CREATE
-- INDEX on a large table could outlast the statement timeout of the migration.
