-- No query reads grant_transitions by time: the report and the reconciliation count
-- them by grant, and `grants show` reads them by grant (ix_grant_transitions_grant).
-- The index by time cost every transition a secondary entry to write, on the
-- partner-update path where the server's time per row is what bounds the rate.
ALTER TABLE grant_transitions DROP INDEX ix_grant_transitions_at;
