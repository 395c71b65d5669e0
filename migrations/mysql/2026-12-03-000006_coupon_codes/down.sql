ALTER TABLE grants DROP INDEX uq_grants_code, DROP COLUMN expires_at, DROP COLUMN valid_from, DROP COLUMN code;
DROP TABLE coupon_codes;
