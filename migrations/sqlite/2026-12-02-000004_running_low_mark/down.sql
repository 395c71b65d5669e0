ALTER TABLE coupons DROP COLUMN running_low_alerted_stock;
