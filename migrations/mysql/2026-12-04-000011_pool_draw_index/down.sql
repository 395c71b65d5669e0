ALTER TABLE coupon_codes
  DROP INDEX ix_coupon_codes_pool,
  ADD KEY ix_coupon_codes_draw (coupon_id, grant_id, id);
