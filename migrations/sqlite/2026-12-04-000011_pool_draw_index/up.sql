-- The pool draw's index: see the MySQL migration of the same name.
DROP INDEX ix_coupon_codes_draw;
CREATE INDEX ix_coupon_codes_pool ON coupon_codes (coupon_id, id);
