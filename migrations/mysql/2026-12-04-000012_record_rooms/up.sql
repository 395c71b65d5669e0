-- Room a row is written with and gives up when the daemon fills it in later, so that
-- the record keeps its size and InnoDB rewrites it where it stands. A record that grows
-- on a full page (these rows are written in id order, which fills their pages) makes
-- InnoDB reorganize or split the page and log it. Measured on MariaDB 10.11, batches of
-- 200 on 100,000 rows (BENCHMARKS.md): a redemption 2,096 bytes of redo per row without
-- its room, 326 with it; a partner update finished `done` 1,469 without, 226 with; a
-- delivery marked delivered 3,485 without, 648 with.
--
-- A grant's redemption fills `redeemed_at` (8 bytes) and lengthens `state` from
-- 'granted' to 'redeemed' (1 byte): it sets `redemption_room` NULL, and a return to
-- 'granted' puts the 9 bytes back. 'expired' and 'revoked' are as long as 'granted' and
-- leave the room as it is.
ALTER TABLE grants ADD COLUMN redemption_room BINARY(9) NULL DEFAULT x'000000000000000000';
-- A partner update finished fills `processed_at` (8 bytes) and shortens `status` from
-- 'queued' to 'done' (2 bytes): `finish_room` is set NULL. Partners' and the API's
-- inserts leave it out and get the default.
ALTER TABLE grant_updates ADD COLUMN finish_room BINARY(6) NULL DEFAULT x'000000000000';
-- A delivery handed off in memory is written with its `hold_token` (8 bytes); delivered
-- at its first attempt it fills `last_status` (4) and `delivered_at` (8), lengthens
-- `status` from 'pending' to 'delivered' (2) and clears `hold_token`: `delivery_room`
-- is set NULL. (A delivery claimed from the outbox grows by its `hold_token` when it is
-- claimed, as before.)
ALTER TABLE deliveries ADD COLUMN delivery_room BINARY(6) NULL DEFAULT x'000000000000';
