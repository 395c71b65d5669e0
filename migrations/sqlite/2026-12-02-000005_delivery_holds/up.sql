-- Deliveries are fenced: see the MySQL migration of the same name.
ALTER TABLE deliveries ADD COLUMN hold_token BIGINT NULL;
DROP INDEX ix_deliveries_due;
CREATE INDEX ix_deliveries_due ON deliveries (status, channel, next_attempt_at);
