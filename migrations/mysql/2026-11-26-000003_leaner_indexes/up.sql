-- Fewer secondary indexes on the two tables every request writes (see BENCHMARKS.md).
--
-- A request's status changes twice (queued -> claimed -> done); each change moved its
-- entries in two indexes. Lease recovery (status = 'claimed' AND claimed_at < ?) is
-- served by (status, id) just as well: only the claims in flight are 'claimed'.
ALTER TABLE trigger_requests DROP INDEX ix_trigger_requests_lease;

-- A grant's id is the id of its request. Saying so with a CHECK makes request_id
-- unique through the primary key, without an index of its own; the foreign key to the
-- request moves to id, which the primary key serves.
ALTER TABLE grants DROP FOREIGN KEY fk_grants_request;
ALTER TABLE grants
  DROP INDEX uq_grants_request,
  ADD CONSTRAINT ck_grants_request CHECK (request_id = id),
  ADD CONSTRAINT fk_grants_request FOREIGN KEY (id) REFERENCES trigger_requests (id);
