-- Fills the Kafka topic `ad-events` with 30,000 generated ad events in the shape of the Yahoo
-- streaming benchmark's (user, page, ad, ad type, event type, time, IP), for
-- examples/yahoo_campaign_counts.sql: 30 s of event time (1,000 events a second) over the 1,000 ads
-- of examples/yahoo_campaigns.jsonl, each event stamped up to 2 s early (out of order). Keyed by
-- IP address, so that every partition holds events of the whole 30 s in the order they were made.
SET 'trigger' = 'once';
CREATE TABLE gen (user_id BIGINT, page_id BIGINT, ad_id BIGINT, ad_type TEXT, event_type TEXT,
                  jitter_ms BIGINT, ip BIGINT, ts TIMESTAMP)
  WITH (connector = 'datagen', rows_per_second = '1000', total_rows = '30000', seed = '3',
        splits = '1', 'fields.user_id.max' = '99999', 'fields.page_id.max' = '9999',
        'fields.ad_id.min' = '0', 'fields.ad_id.max' = '999',
        'fields.ad_type.values' = 'banner,modal,sponsored-search,mail,mobile',
        'fields.event_type.values' = 'view,click,purchase',
        'fields.jitter_ms.min' = '0', 'fields.jitter_ms.max' = '2000');
CREATE TABLE ad_events (user_id BIGINT, page_id BIGINT, ad_id BIGINT, ad_type TEXT,
                        event_type TEXT, event_time TIMESTAMP, ip_address TEXT)
  WITH (connector = 'kafka', 'bootstrap.servers' = '127.0.0.1:9092', topic = 'ad-events',
        format = 'jsonl', 'key.column' = 'ip_address');
INSERT INTO ad_events
SELECT user_id, page_id, ad_id, ad_type, event_type,
       to_timestamp_millis(CAST(ts AS BIGINT) / 1000000 - jitter_ms),
       concat('10.0.', CAST(ip % 256 AS TEXT), '.', CAST(ip / 256 % 256 AS TEXT))
FROM gen;
