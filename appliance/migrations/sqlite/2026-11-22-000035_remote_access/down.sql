DROP TABLE mail_outbox;
DROP TABLE access_requests;
DROP TABLE machines;
DROP TABLE site_approvers;
DROP TABLE site_policies;
ALTER TABLE organisations DROP COLUMN disabled_at_us;
ALTER TABLE users DROP COLUMN site_id;
