DROP TABLE firmware_rollout_devices;
DROP TABLE firmware_rollouts;
DROP TABLE firmware;
ALTER TABLE devices DROP COLUMN model;
