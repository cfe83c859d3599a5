-- The issue's example: JSON-lines click files in, per-batch page counts out as files.
SET 'trigger' = '1s';
SET 'partitions' = '4';

CREATE TABLE clicks (user_id BIGINT, page TEXT, ts TIMESTAMP)
  WITH (connector = 'files', path = 'file:///tmp/sluice-demo/in', format = 'jsonl', max_files_per_batch = '100');

CREATE TABLE page_counts (batch BIGINT, page TEXT, n BIGINT)
  WITH (connector = 'files', path = 'file:///tmp/sluice-demo/out', format = 'jsonl');

INSERT INTO page_counts SELECT _batch, page, count(*) FROM clicks WHERE user_id > 0 GROUP BY _batch, page;
