-- A grant's life after delivery: see the MySQL migration of the same name.
ALTER TABLE grants ADD COLUMN state VARCHAR(16) NOT NULL DEFAULT 'granted';
ALTER TABLE grants ADD COLUMN redeemed_at TIMESTAMP NULL;
ALTER TABLE grants ADD COLUMN reminded_at TIMESTAMP NULL;
CREATE INDEX ix_grants_expiry ON grants (state, expires_at);

CREATE TABLE grant_updates (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  update_key VARCHAR(255) NOT NULL,
  code VARCHAR(255) NULL,
  grant_id BIGINT NULL,
  action VARCHAR(255) NOT NULL,
  reason TEXT NULL,
  occurred_at TIMESTAMP NULL,
  status VARCHAR(16) NOT NULL DEFAULT 'queued',
  error TEXT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  processed_at TIMESTAMP NULL
);
CREATE UNIQUE INDEX uq_grant_updates_update_key ON grant_updates (update_key);
CREATE INDEX ix_grant_updates_claim ON grant_updates (status, id);

CREATE TABLE grant_transitions (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  grant_id BIGINT NOT NULL,
  from_state VARCHAR(16) NOT NULL,
  to_state VARCHAR(16) NOT NULL,
  update_key VARCHAR(255) NULL,
  job VARCHAR(64) NULL,
  operator VARCHAR(255) NULL,
  reason TEXT NULL,
  at TIMESTAMP NOT NULL
);
CREATE INDEX ix_grant_transitions_grant ON grant_transitions (grant_id, id);
CREATE INDEX ix_grant_transitions_at ON grant_transitions (at);

CREATE TABLE campaign_days (
  campaign_id VARCHAR(64) NOT NULL,
  day VARCHAR(10) NOT NULL,
  granted_cents BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (campaign_id, day)
);
