-- Fills the Kafka topic `events` with 20,000 generated events, keyed by user, for
-- examples/kafka_count_by_key.sql (the README shows the whole sequence).
SET 'trigger' = 'available_now';
CREATE TABLE gen (user TEXT, action TEXT, amount BIGINT)
  WITH (connector = 'datagen', rows_per_second = '5000', total_rows = '20000', seed = '7',
        'fields.user.values' = 'alice,bob,carol,dave,erin,frank,grace,heidi',
        'fields.action.values' = 'view,click,buy', 'fields.amount.max' = '100');
CREATE TABLE events (user TEXT, action TEXT, amount BIGINT)
  WITH (connector = 'kafka', 'bootstrap.servers' = '127.0.0.1:9092', topic = 'events',
        format = 'jsonl', 'key.column' = 'user');
INSERT INTO events SELECT user, action, amount FROM gen;
