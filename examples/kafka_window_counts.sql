-- The seed's events (examples/kafka_produce_events.sql) counted by key in 10-second tumbling
-- windows of the records' Kafka timestamps. In update mode every batch shows the windows it
-- changed with their counts so far; a window is dropped from state once the watermark (the
-- latest timestamp minus 2 s) passes its end, and records for it after that are late.
SET 'trigger' = '1s';
SET 'partitions' = '4';
SET 'output_mode' = 'update';
CREATE TABLE events (user TEXT, action TEXT, amount BIGINT,
                     WATERMARK FOR _timestamp AS _timestamp - INTERVAL '2' SECOND)
  WITH (connector = 'kafka', 'bootstrap.servers' = '127.0.0.1:9092', topic = 'events',
        format = 'jsonl', starting_offsets = 'earliest');
CREATE TABLE window_counts (window_start TIMESTAMP, key TEXT, n BIGINT, amount BIGINT)
  WITH (connector = 'files', path = '/tmp/sluice-example/window_counts', format = 'jsonl');
INSERT INTO window_counts
SELECT window_start, _key, count(*), sum(amount)
FROM TUMBLE(events, _timestamp, INTERVAL '10' SECOND)
GROUP BY window_start, window_end, _key;
