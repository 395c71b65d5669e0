DROP TABLE campaign_days;
DROP TABLE grant_transitions;
DROP TABLE grant_updates;
ALTER TABLE grants DROP INDEX ix_grants_expiry, DROP COLUMN reminded_at, DROP COLUMN redeemed_at, DROP COLUMN state;
