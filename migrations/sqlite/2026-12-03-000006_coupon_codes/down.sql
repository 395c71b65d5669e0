DROP INDEX uq_grants_code;
ALTER TABLE grants DROP COLUMN expires_at;
ALTER TABLE grants DROP COLUMN valid_from;
ALTER TABLE grants DROP COLUMN code;
DROP TABLE coupon_codes;
