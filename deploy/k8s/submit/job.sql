-- Synthetic clicks counted per page every second, written as JSON lines next to the
-- checkpoints (the files sink works on any S3-compatible store).
SET 'name' = 'page-counts';
SET 'trigger' = '1s';
SET 'partitions' = '4';

CREATE TABLE clicks (user_id BIGINT, page TEXT)
  WITH (
    connector = 'datagen',
    rows_per_second = '1000',
    seed = '42',
    'fields.user_id.max' = '10000',
    'fields.page.values' = '/home,/search,/cart,/checkout,/help,/about'
  );

CREATE TABLE page_counts (batch BIGINT, page TEXT, clicks BIGINT)
  WITH (connector = 'files', path = 's3://sluice/output/page_counts', format = 'jsonl');

INSERT INTO page_counts
SELECT _batch, page, count(*) FROM clicks GROUP BY _batch, page;
