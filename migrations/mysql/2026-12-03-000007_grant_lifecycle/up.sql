-- A grant's life after delivery. `state` is `granted`, `redeemed`, `expired` or
-- `revoked`; `redeemed_at` is set while it is redeemed; `reminded_at` once its
-- `coupon.expiring` reminder is in the outbox.
ALTER TABLE grants
  ADD COLUMN state VARCHAR(16) NOT NULL DEFAULT 'granted',
  ADD COLUMN redeemed_at DATETIME(6) NULL,
  ADD COLUMN reminded_at DATETIME(6) NULL,
  -- serves the expiry and reminder jobs: WHERE state = 'granted' AND expires_at <= ?
  ADD KEY ix_grants_expiry (state, expires_at);

-- Partner updates: partners (or the HTTP API) insert (update_key, code or grant_id,
-- action, reason, occurred_at); the daemon owns every other column. Wide VARCHARs, as
-- in trigger_requests, so that a bad value is rejected by the daemon with a reason.
CREATE TABLE grant_updates (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  update_key VARCHAR(255) NOT NULL,
  code VARCHAR(255) NULL,
  grant_id BIGINT NULL,
  action VARCHAR(255) NOT NULL,
  reason TEXT NULL,
  occurred_at DATETIME(6) NULL,
  status VARCHAR(16) NOT NULL DEFAULT 'queued',
  error TEXT NULL,
  attempts INT NOT NULL DEFAULT 0,
  created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  processed_at DATETIME(6) NULL,
  UNIQUE KEY uq_grant_updates_update_key (update_key),
  -- serves the claim: WHERE status = 'queued' ORDER BY id ... FOR UPDATE SKIP LOCKED
  KEY ix_grant_updates_claim (status, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per change of a grant's state, with what made it: a partner update
-- (update_key), a job (job) or an operator (operator).
CREATE TABLE grant_transitions (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  grant_id BIGINT NOT NULL,
  from_state VARCHAR(16) NOT NULL,
  to_state VARCHAR(16) NOT NULL,
  update_key VARCHAR(255) NULL,
  job VARCHAR(64) NULL,
  operator VARCHAR(255) NULL,
  reason TEXT NULL,
  at DATETIME(6) NOT NULL,
  KEY ix_grant_transitions_grant (grant_id, id),
  KEY ix_grant_transitions_at (at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The daily budget's ledger: face value granted per campaign and day, the day counted
-- in the campaign's time zone ('YYYY-MM-DD').
CREATE TABLE campaign_days (
  campaign_id VARCHAR(64) NOT NULL,
  day VARCHAR(10) NOT NULL,
  granted_cents BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (campaign_id, day)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
