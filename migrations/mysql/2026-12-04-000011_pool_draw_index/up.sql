-- The pool draw walks a coupon's codes in id order from where its daemon last drew
-- (`draw_codes`, `… AND id > ? AND grant_id IS NULL ORDER BY id`): an index of
-- (coupon_id, id) serves it, and issuing a code no longer moves an entry of it. The
-- index it replaces, (coupon_id, grant_id, id), moved one entry per issued code, on
-- the grant path, where the server's time per grant is what bounds the rate.
ALTER TABLE coupon_codes
  DROP INDEX ix_coupon_codes_draw,
  ADD KEY ix_coupon_codes_pool (coupon_id, id);
