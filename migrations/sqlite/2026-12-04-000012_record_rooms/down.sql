ALTER TABLE deliveries DROP COLUMN delivery_room;
