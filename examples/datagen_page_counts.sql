-- The built-in example of `sluice local`: synthetic clicks, counted per page in every batch.
SET 'name' = 'page-counts-example';
SET 'trigger' = '1s';
SET 'partitions' = '4';

CREATE TABLE clicks (user_id BIGINT, page TEXT, ts TIMESTAMP)
  WITH (
    connector = 'datagen',
    rows_per_second = '50000',
    total_rows = '300000',
    seed = '42',
    'fields.user_id.min' = '-100',
    'fields.user_id.max' = '10000',
    'fields.page.values' = '/home,/search,/cart,/checkout,/help,/about'
  );

CREATE TABLE page_counts (batch BIGINT, page TEXT, clicks BIGINT, users BIGINT)
  WITH (connector = 'console', num_rows = '6');

INSERT INTO page_counts
SELECT _batch, page, count(*), count(DISTINCT user_id)
FROM clicks
WHERE user_id > 0
GROUP BY _batch, page
ORDER BY page;
