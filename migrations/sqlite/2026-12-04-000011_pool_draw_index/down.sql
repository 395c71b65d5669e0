DROP INDEX ix_coupon_codes_pool;
CREATE INDEX ix_coupon_codes_draw ON coupon_codes (coupon_id, grant_id, id);
