-- Each coupon's remaining stock over time, for the ops console's burn-down plots: one
-- row per coupon per tick of `schedule.sample_stock`, written by one daemon per tick
-- and pruned to the last day by the same job. The tick's time is the key, so a tick
-- written twice (a lease that ran out under a slow run) keeps its first row.
CREATE TABLE stock_samples (
  coupon_id VARCHAR(64) NOT NULL,
  sampled_at DATETIME(6) NOT NULL,
  remaining BIGINT NOT NULL,
  PRIMARY KEY (coupon_id, sampled_at),
  KEY ix_stock_samples_time (sampled_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
