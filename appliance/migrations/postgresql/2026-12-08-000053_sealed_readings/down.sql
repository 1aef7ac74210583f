DROP TABLE reading_blocks;
