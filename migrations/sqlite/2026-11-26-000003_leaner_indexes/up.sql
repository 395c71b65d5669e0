-- A request's status changes twice (queued -> claimed -> done); each change moved its
-- entries in two indexes. Lease recovery (status = 'claimed' AND claimed_at < ?) is
-- served by (status, id) just as well: only the claims in flight are 'claimed'.
-- (MySQL also drops grants' separate unique index on request_id; SQLite cannot add a
-- CHECK to an existing table, so it keeps it.)
DROP INDEX ix_trigger_requests_lease;
