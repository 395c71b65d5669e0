-- Scheduled inventory control: the rotation audit trail, one lease row per scheduled
-- job (so that N daemons run each job once per tick), and "alerted once" marks.
CREATE TABLE coupon_rotations (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  campaign_id VARCHAR(64) NOT NULL,
  from_coupon VARCHAR(64) NOT NULL,
  to_coupon VARCHAR(64) NULL,
  reason VARCHAR(16) NOT NULL,
  remaining BIGINT NOT NULL,
  rotated_at DATETIME(6) NOT NULL,
  KEY ix_coupon_rotations_campaign (campaign_id, rotated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE job_leases (
  job VARCHAR(64) NOT NULL PRIMARY KEY,
  holder VARCHAR(128) NULL,
  held_until DATETIME(6) NULL,
  last_tick DATETIME(6) NULL,
  last_finished_at DATETIME(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

ALTER TABLE campaigns
  ADD COLUMN exhausted_alerted_at DATETIME(6) NULL,
  ADD COLUMN budget_alerted_at DATETIME(6) NULL;
