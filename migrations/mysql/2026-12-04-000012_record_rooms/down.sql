ALTER TABLE grant_updates DROP COLUMN finish_room;
ALTER TABLE grants DROP COLUMN redemption_room;
