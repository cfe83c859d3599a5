-- The Yahoo streaming benchmark's job: ad events from Kafka (JSON), keep the views, join each
-- ad to its campaign (a static table), and count views per campaign in 10-second windows of
-- event time, written once per window when the watermark (the latest event minus 5 s) passes
-- its end. The README's "Kafka: the Yahoo streaming benchmark" section runs it on a local broker.
SET 'trigger' = '1s';
SET 'partitions' = '4';
SET 'output_mode' = 'append';
CREATE TABLE ad_events (user_id BIGINT, page_id BIGINT, ad_id BIGINT, ad_type TEXT,
                        event_type TEXT, event_time TIMESTAMP, ip_address TEXT,
                        WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND)
  WITH (connector = 'kafka', 'bootstrap.servers' = '127.0.0.1:9092', topic = 'ad-events',
        format = 'jsonl', starting_offsets = 'earliest', max_offsets_per_trigger = '5000');
CREATE TABLE campaigns (ad_id BIGINT, campaign_id BIGINT)
  WITH (connector = 'files', path = '/tmp/sluice-example/campaigns', format = 'jsonl',
        static = 'true');
CREATE TABLE campaign_counts (window_start TIMESTAMP, campaign_id BIGINT, views BIGINT)
  WITH (connector = 'files', path = '/tmp/sluice-example/campaign_counts', format = 'jsonl');
INSERT INTO campaign_counts
SELECT date_bin(INTERVAL '10 seconds', e.event_time), c.campaign_id, count(*)
FROM ad_events e JOIN campaigns c ON e.ad_id = c.ad_id
WHERE e.event_type = 'view'
GROUP BY date_bin(INTERVAL '10 seconds', e.event_time), c.campaign_id;
