DROP TABLE rollup_progress;
DROP TABLE reading_rollups;
