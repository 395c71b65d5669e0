ALTER TABLE campaigns DROP COLUMN exhausted_alerted_at;
ALTER TABLE campaigns DROP COLUMN budget_alerted_at;
DROP TABLE job_leases;
DROP TABLE coupon_rotations;
