ALTER TABLE deliveries DROP COLUMN delivery_room;
ALTER TABLE grant_updates DROP COLUMN finish_room;
ALTER TABLE grants DROP COLUMN redemption_room;
