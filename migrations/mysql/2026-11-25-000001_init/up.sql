-- Intake: client apps insert (request_key, user_id, event, attributes); the daemon
-- owns every other column. Wide VARCHARs so that an oversized value is accepted by the
-- database and then rejected by the daemon with a reason, instead of failing the insert.
CREATE TABLE trigger_requests (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  request_key VARCHAR(255) NOT NULL,
  user_id VARCHAR(255) NOT NULL,
  event VARCHAR(255) NOT NULL,
  attributes LONGTEXT NULL,
  status VARCHAR(16) NOT NULL DEFAULT 'queued',
  outcome VARCHAR(32) NULL,
  error TEXT NULL,
  detail TEXT NULL,
  user_type VARCHAR(64) NULL,
  campaign_id VARCHAR(64) NULL,
  rules_version VARCHAR(64) NULL,
  attempts INT NOT NULL DEFAULT 0,
  claim_token BIGINT NULL,
  created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  claimed_at DATETIME(6) NULL,
  processed_at DATETIME(6) NULL,
  UNIQUE KEY uq_trigger_requests_request_key (request_key),
  -- serves the claim: WHERE status = 'queued' ORDER BY id ... FOR UPDATE SKIP LOCKED
  KEY ix_trigger_requests_claim (status, id),
  -- serves lease recovery: WHERE status = 'claimed' AND claimed_at < ?
  KEY ix_trigger_requests_lease (status, claimed_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE campaigns (
  id VARCHAR(64) NOT NULL PRIMARY KEY,
  event VARCHAR(64) NOT NULL,
  audience VARCHAR(64) NOT NULL,
  per_user_limit BIGINT NOT NULL,
  position INT NOT NULL,
  starts_at DATETIME(6) NULL,
  ends_at DATETIME(6) NULL,
  budget_cents BIGINT NULL,
  granted_cents BIGINT NOT NULL DEFAULT 0,
  updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per coupon of a rotation chain. stock = everything ever made available,
-- granted + remaining = stock; config_stock = the stock the config last asked for, so
-- a raised config stock adds only the difference.
CREATE TABLE coupons (
  id VARCHAR(64) NOT NULL PRIMARY KEY,
  campaign_id VARCHAR(64) NOT NULL,
  position INT NOT NULL,
  face_value_cents BIGINT NOT NULL,
  channel VARCHAR(64) NOT NULL,
  config_stock BIGINT NOT NULL,
  stock BIGINT NOT NULL,
  granted BIGINT NOT NULL DEFAULT 0,
  remaining BIGINT NOT NULL,
  low_stock BIGINT NOT NULL DEFAULT 0,
  state VARCHAR(16) NOT NULL DEFAULT 'active',
  updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  CONSTRAINT ck_coupons_remaining CHECK (remaining >= 0),
  KEY ix_coupons_campaign (campaign_id, position)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per (user, event): the lock that serialises decisions about one user, so two
-- requests of the same user are never both treated as the user's first visit.
CREATE TABLE participations (
  user_id VARCHAR(255) NOT NULL,
  event VARCHAR(64) NOT NULL,
  requests BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (user_id, event)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per granted coupon. A grant's id is the id of the request that earned it
-- (one grant per request), so the grant, its outbox row and the request's status are
-- written in one transaction without a round trip for generated keys.
CREATE TABLE grants (
  id BIGINT NOT NULL PRIMARY KEY,
  request_id BIGINT NOT NULL,
  user_id VARCHAR(255) NOT NULL,
  event VARCHAR(64) NOT NULL,
  campaign_id VARCHAR(64) NOT NULL,
  coupon_id VARCHAR(64) NOT NULL,
  face_value_cents BIGINT NOT NULL,
  user_type VARCHAR(64) NOT NULL,
  rules_version VARCHAR(64) NOT NULL,
  granted_at DATETIME(6) NOT NULL,
  UNIQUE KEY uq_grants_request (request_id),
  KEY ix_grants_history (user_id, event, campaign_id),
  KEY ix_grants_coupon (coupon_id, granted_at),
  CONSTRAINT fk_grants_request FOREIGN KEY (request_id) REFERENCES trigger_requests (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The outbox: one row per webhook to send. webhook_id is the Standard Webhooks
-- `webhook-id`, the same on every attempt.
CREATE TABLE deliveries (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  webhook_id VARCHAR(64) NOT NULL,
  channel VARCHAR(64) NOT NULL,
  event_type VARCHAR(64) NOT NULL,
  grant_id BIGINT NULL,
  payload LONGTEXT NOT NULL,
  status VARCHAR(16) NOT NULL DEFAULT 'pending',
  attempts INT NOT NULL DEFAULT 0,
  next_attempt_at DATETIME(6) NOT NULL,
  last_status INT NULL,
  last_error TEXT NULL,
  created_at DATETIME(6) NOT NULL,
  delivered_at DATETIME(6) NULL,
  UNIQUE KEY uq_deliveries_webhook_id (webhook_id),
  -- serves the dispatcher: WHERE status = 'pending' AND next_attempt_at <= ?
  KEY ix_deliveries_due (status, next_attempt_at),
  KEY ix_deliveries_grant (grant_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE delivery_attempts (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  delivery_id BIGINT NOT NULL,
  attempt INT NOT NULL,
  attempted_at DATETIME(6) NOT NULL,
  status_code INT NULL,
  error TEXT NULL,
  duration_ms BIGINT NOT NULL,
  KEY ix_delivery_attempts_delivery (delivery_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- A channel whose partner answered 410 Gone is disabled until ops enable it again.
CREATE TABLE channel_states (
  channel VARCHAR(64) NOT NULL PRIMARY KEY,
  disabled_at DATETIME(6) NULL,
  reason TEXT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
