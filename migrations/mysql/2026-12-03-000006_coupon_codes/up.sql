-- Codes a user redeems. One row per code: imported into a pool coupon by `codes import`
-- (imported_at set; grant_id NULL until the code is issued) or generated at a grant
-- (imported_at NULL; issued at once). `code` is unique across all coupons, so a
-- generated code never repeats one issued or imported before; `grant_id` is unique, so
-- a code is issued at most once and a grant holds one code.
CREATE TABLE coupon_codes (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  coupon_id VARCHAR(64) NOT NULL,
  code VARCHAR(64) NOT NULL,
  grant_id BIGINT NULL,
  imported_at DATETIME(6) NULL,
  issued_at DATETIME(6) NULL,
  UNIQUE KEY uq_coupon_codes_code (code),
  UNIQUE KEY uq_coupon_codes_grant (grant_id),
  -- serves the draw: WHERE coupon_id = ? AND grant_id IS NULL ORDER BY id LIMIT n
  KEY ix_coupon_codes_draw (coupon_id, grant_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- What the user holds: the code, and the validity counted at the grant. NULL where the
-- coupon has none. The unique key is the last word on "never two grants with one code".
ALTER TABLE grants
  ADD COLUMN code VARCHAR(64) NULL,
  ADD COLUMN valid_from DATETIME(6) NULL,
  ADD COLUMN expires_at DATETIME(6) NULL,
  ADD UNIQUE KEY uq_grants_code (code);
