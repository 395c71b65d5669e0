CREATE INDEX ix_trigger_requests_lease ON trigger_requests (status, claimed_at);
