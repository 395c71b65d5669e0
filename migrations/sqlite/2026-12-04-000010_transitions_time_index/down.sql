CREATE INDEX ix_grant_transitions_at ON grant_transitions (at);
