-- Codes a user redeems: see the MySQL migration of the same name.
CREATE TABLE coupon_codes (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  coupon_id VARCHAR(64) NOT NULL,
  code VARCHAR(64) NOT NULL,
  grant_id BIGINT NULL,
  imported_at TIMESTAMP NULL,
  issued_at TIMESTAMP NULL
);
CREATE UNIQUE INDEX uq_coupon_codes_code ON coupon_codes (code);
CREATE UNIQUE INDEX uq_coupon_codes_grant ON coupon_codes (grant_id);
CREATE INDEX ix_coupon_codes_draw ON coupon_codes (coupon_id, grant_id, id);

ALTER TABLE grants ADD COLUMN code VARCHAR(64) NULL;
ALTER TABLE grants ADD COLUMN valid_from TIMESTAMP NULL;
ALTER TABLE grants ADD COLUMN expires_at TIMESTAMP NULL;
CREATE UNIQUE INDEX uq_grants_code ON grants (code);
