DROP TABLE channel_states;
DROP TABLE delivery_attempts;
DROP TABLE deliveries;
DROP TABLE grants;
DROP TABLE participations;
DROP TABLE coupons;
DROP TABLE campaigns;
DROP TABLE trigger_requests;
