-- Intake: client apps insert (request_key, user_id, event, attributes); the daemon
-- owns every other column. Wide VARCHARs so that an oversized value is accepted by the
-- database and then rejected by the daemon with a reason, instead of failing the insert.
CREATE TABLE trigger_requests (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  request_key VARCHAR(255) NOT NULL,
  user_id VARCHAR(255) NOT NULL,
  event VARCHAR(255) NOT NULL,
  attributes TEXT NULL,
  status VARCHAR(16) NOT NULL DEFAULT 'queued',
  outcome VARCHAR(32) NULL,
  error TEXT NULL,
  detail TEXT NULL,
  user_type VARCHAR(64) NULL,
  campaign_id VARCHAR(64) NULL,
  rules_version VARCHAR(64) NULL,
  attempts INT NOT NULL DEFAULT 0,
  claim_token BIGINT NULL,
  created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  claimed_at TIMESTAMP NULL,
  processed_at TIMESTAMP NULL
  -- serves the claim: WHERE status = 'queued' ORDER BY id ... FOR UPDATE SKIP LOCKED
  -- serves lease recovery: WHERE status = 'claimed' AND claimed_at < ?
);

CREATE TABLE campaigns (
  id VARCHAR(64) NOT NULL PRIMARY KEY,
  event VARCHAR(64) NOT NULL,
  audience VARCHAR(64) NOT NULL,
  per_user_limit BIGINT NOT NULL,
  position INT NOT NULL,
  starts_at TIMESTAMP NULL,
  ends_at TIMESTAMP NULL,
  budget_cents BIGINT NULL,
  granted_cents BIGINT NOT NULL DEFAULT 0,
  updated_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);

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
  updated_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  CONSTRAINT ck_coupons_remaining CHECK (remaining >= 0)
);

-- One row per (user, event): the lock that serialises decisions about one user, so two
-- requests of the same user are never both treated as the user's first visit.
CREATE TABLE participations (
  user_id VARCHAR(255) NOT NULL,
  event VARCHAR(64) NOT NULL,
  requests BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (user_id, event)
);

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
  granted_at TIMESTAMP NOT NULL,
  FOREIGN KEY (request_id) REFERENCES trigger_requests (id)
);

-- The outbox: one row per webhook to send. webhook_id is the Standard Webhooks
-- `webhook-id`, the same on every attempt.
CREATE TABLE deliveries (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  webhook_id VARCHAR(64) NOT NULL,
  channel VARCHAR(64) NOT NULL,
  event_type VARCHAR(64) NOT NULL,
  grant_id BIGINT NULL,
  payload TEXT NOT NULL,
  status VARCHAR(16) NOT NULL DEFAULT 'pending',
  attempts INT NOT NULL DEFAULT 0,
  next_attempt_at TIMESTAMP NOT NULL,
  last_status INT NULL,
  last_error TEXT NULL,
  created_at TIMESTAMP NOT NULL,
  delivered_at TIMESTAMP NULL
  -- serves the dispatcher: WHERE status = 'pending' AND next_attempt_at <= ?
);

CREATE TABLE delivery_attempts (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  delivery_id BIGINT NOT NULL,
  attempt INT NOT NULL,
  attempted_at TIMESTAMP NOT NULL,
  status_code INT NULL,
  error TEXT NULL,
  duration_ms BIGINT NOT NULL
);

-- A channel whose partner answered 410 Gone is disabled until ops enable it again.
CREATE TABLE channel_states (
  channel VARCHAR(64) NOT NULL PRIMARY KEY,
  disabled_at TIMESTAMP NULL,
  reason TEXT NULL
);

CREATE UNIQUE INDEX uq_trigger_requests_request_key ON trigger_requests (request_key);
CREATE INDEX ix_trigger_requests_claim ON trigger_requests (status, id);
CREATE INDEX ix_trigger_requests_lease ON trigger_requests (status, claimed_at);
CREATE INDEX ix_coupons_campaign ON coupons (campaign_id, position);
CREATE UNIQUE INDEX uq_grants_request ON grants (request_id);
CREATE INDEX ix_grants_history ON grants (user_id, event, campaign_id);
CREATE INDEX ix_grants_coupon ON grants (coupon_id, granted_at);
CREATE UNIQUE INDEX uq_deliveries_webhook_id ON deliveries (webhook_id);
CREATE INDEX ix_deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX ix_deliveries_grant ON deliveries (grant_id);
CREATE INDEX ix_delivery_attempts_delivery ON delivery_attempts (delivery_id);
