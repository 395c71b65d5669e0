-- No query reads grant_transitions by time: see the MySQL migration of the same name.
DROP INDEX ix_grant_transitions_at;
