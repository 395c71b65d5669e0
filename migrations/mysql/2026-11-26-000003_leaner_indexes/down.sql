ALTER TABLE grants DROP FOREIGN KEY fk_grants_request;
ALTER TABLE grants
  DROP CONSTRAINT ck_grants_request,
  ADD UNIQUE KEY uq_grants_request (request_id),
  ADD CONSTRAINT fk_grants_request FOREIGN KEY (request_id) REFERENCES trigger_requests (id);
ALTER TABLE trigger_requests ADD KEY ix_trigger_requests_lease (status, claimed_at);
