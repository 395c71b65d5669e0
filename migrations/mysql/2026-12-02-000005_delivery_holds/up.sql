-- Deliveries are fenced. A dispatcher that claims a delivery, or a grant that hands one
-- off to its daemon's dispatcher, writes a fresh hold_token with the hold's end; the
-- attempt's result is recorded only while the row still carries that token, so a late
-- result can never overwrite another sender's. NULL: nobody holds it.
--
-- Each channel is claimed on its own (one slow partner must not delay another), so the
-- due index leads with the channel after the status.
ALTER TABLE deliveries
  ADD COLUMN hold_token BIGINT NULL,
  DROP INDEX ix_deliveries_due,
  ADD KEY ix_deliveries_due (status, channel, next_attempt_at);
