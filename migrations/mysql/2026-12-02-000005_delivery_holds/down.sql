ALTER TABLE deliveries
  DROP INDEX ix_deliveries_due,
  ADD KEY ix_deliveries_due (status, next_attempt_at),
  DROP COLUMN hold_token;
