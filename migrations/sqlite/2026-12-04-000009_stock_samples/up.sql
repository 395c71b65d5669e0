-- Each coupon's remaining stock over time: see the MySQL migration of the same name.
CREATE TABLE stock_samples (
  coupon_id VARCHAR(64) NOT NULL,
  sampled_at TIMESTAMP NOT NULL,
  remaining BIGINT NOT NULL,
  PRIMARY KEY (coupon_id, sampled_at)
);
CREATE INDEX ix_stock_samples_time ON stock_samples (sampled_at);
