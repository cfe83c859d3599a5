-- A 1-minute error rate per service over Kafka, in event time: each minute's row is written
-- once, when the watermark (the latest request time minus 10 s) passes the minute's end.
-- Requests older than that are late: dropped from the counts and kept in `late_requests`.
SET 'trigger' = '1s';
SET 'partitions' = '4';
SET 'output_mode' = 'append';
SET 'late_rows.table' = 'late_requests';
CREATE TABLE requests (service TEXT, status BIGINT, ts TIMESTAMP,
                       WATERMARK FOR ts AS ts - INTERVAL '10' SECOND)
  WITH (connector = 'kafka', 'bootstrap.servers' = '127.0.0.1:9092', topic = 'requests',
        format = 'jsonl', starting_offsets = 'earliest', max_offsets_per_trigger = '5000');
CREATE TABLE error_rate (minute TIMESTAMP, service TEXT, requests BIGINT, errors BIGINT,
                         error_rate DOUBLE)
  WITH (connector = 'files', path = '/tmp/sluice-example/error_rate', format = 'jsonl');
CREATE TABLE late_requests
  WITH (connector = 'files', path = '/tmp/sluice-example/late_requests', format = 'jsonl');
INSERT INTO error_rate
SELECT window_start, service, count(*), count(*) FILTER (WHERE status >= 500),
       CAST(count(*) FILTER (WHERE status >= 500) AS DOUBLE) / count(*)
FROM TUMBLE(requests, ts, INTERVAL '1' MINUTE)
GROUP BY window_start, window_end, service;
