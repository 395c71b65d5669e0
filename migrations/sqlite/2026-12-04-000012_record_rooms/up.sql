-- The rooms of the MySQL migration of the same name (see there). SQLite rewrites a
-- record whatever its size; the columns keep the two schemas alike.
ALTER TABLE grants ADD COLUMN redemption_room BLOB DEFAULT x'000000000000000000';
ALTER TABLE grant_updates ADD COLUMN finish_room BLOB DEFAULT x'000000000000';
ALTER TABLE deliveries ADD COLUMN delivery_room BLOB DEFAULT x'000000000000';
