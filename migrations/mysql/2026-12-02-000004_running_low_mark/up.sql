-- The `coupon.running_low` alert is sent once per coupon until it is restocked: the
-- mark is the coupon's `stock` when the alert was sent (NULL: never sent). Stock that
-- grows past it (`stock add`, a raised config stock) re-arms the alert.
ALTER TABLE coupons ADD COLUMN running_low_alerted_stock BIGINT NULL;
