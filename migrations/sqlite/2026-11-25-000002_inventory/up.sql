-- Scheduled inventory control: the rotation audit trail, one lease row per scheduled
-- job (so that N daemons run each job once per tick), and "alerted once" marks.
CREATE TABLE coupon_rotations (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  campaign_id VARCHAR(64) NOT NULL,
  from_coupon VARCHAR(64) NOT NULL,
  to_coupon VARCHAR(64) NULL,
  reason VARCHAR(16) NOT NULL,
  remaining BIGINT NOT NULL,
  rotated_at TIMESTAMP NOT NULL
);
CREATE INDEX ix_coupon_rotations_campaign ON coupon_rotations (campaign_id, rotated_at);

CREATE TABLE job_leases (
  job VARCHAR(64) NOT NULL PRIMARY KEY,
  holder VARCHAR(128) NULL,
  held_until TIMESTAMP NULL,
  last_tick TIMESTAMP NULL,
  last_finished_at TIMESTAMP NULL
);

ALTER TABLE campaigns ADD COLUMN exhausted_alerted_at TIMESTAMP NULL;
ALTER TABLE campaigns ADD COLUMN budget_alerted_at TIMESTAMP NULL;
