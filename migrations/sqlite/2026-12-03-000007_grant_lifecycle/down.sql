DROP TABLE campaign_days;
DROP TABLE grant_transitions;
DROP TABLE grant_updates;
DROP INDEX ix_grants_expiry;
ALTER TABLE grants DROP COLUMN reminded_at;
ALTER TABLE grants DROP COLUMN redeemed_at;
ALTER TABLE grants DROP COLUMN state;
