ALTER TABLE grant_transitions ADD KEY ix_grant_transitions_at (at);
