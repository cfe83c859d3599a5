-- Fills the Kafka topic `requests` with 30,000 generated HTTP requests, keyed by service, for
-- examples/kafka_error_rate.sql: five minutes of event time (100 requests a second), each request
-- stamped up to 15 s early so that events arrive out of order and some arrive late. One split,
-- so that each partition holds its requests in the order they were generated.
SET 'trigger' = 'once';
CREATE TABLE gen (service TEXT, status BIGINT, jitter_ms BIGINT, ts TIMESTAMP)
  WITH (connector = 'datagen', rows_per_second = '100', total_rows = '30000', seed = '11',
        splits = '1', 'fields.service.values' = 'api,auth,search,checkout',
        'fields.status.min' = '200', 'fields.status.max' = '599',
        'fields.jitter_ms.min' = '0', 'fields.jitter_ms.max' = '15000');
CREATE TABLE requests (service TEXT, status BIGINT, ts TIMESTAMP)
  WITH (connector = 'kafka', 'bootstrap.servers' = '127.0.0.1:9092', topic = 'requests',
        format = 'jsonl', 'key.column' = 'service');
INSERT INTO requests
SELECT service, status, to_timestamp_millis(CAST(ts AS BIGINT) / 1000000 - jitter_ms) FROM gen;
