DROP INDEX ix_deliveries_due;
CREATE INDEX ix_deliveries_due ON deliveries (status, next_attempt_at);
ALTER TABLE deliveries DROP COLUMN hold_token;
