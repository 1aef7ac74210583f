DROP TABLE audit_checkpoints;
DROP TABLE audit_append_lock;
DROP TABLE audit_log;
DROP FUNCTION audit_log_refuse_change();
DROP TABLE enrolment_tokens;
DROP TABLE users;
DROP TABLE sites;
DROP TABLE organisations;
