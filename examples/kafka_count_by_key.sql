-- Sluice's seed job: a topic of events counted by key. Two INSERTs, so two jobs reading the
-- same topic on their own: the count per key of each batch on the console, and the running
-- count per key (state kept across batches, exact after any failure) written to files.
SET 'trigger' = '1s';
SET 'partitions' = '4';
CREATE TABLE events (user TEXT, action TEXT, amount BIGINT)
  WITH (connector = 'kafka', 'bootstrap.servers' = '127.0.0.1:9092', topic = 'events',
        format = 'jsonl', starting_offsets = 'earliest', max_offsets_per_trigger = '50000');
CREATE TABLE per_batch WITH (connector = 'console', num_rows = '10');
CREATE TABLE running_counts (key TEXT, n BIGINT, amount BIGINT)
  WITH (connector = 'files', path = '/tmp/sluice-example/running_counts', format = 'jsonl');
INSERT INTO per_batch SELECT _batch AS batch, _key AS key, count(*) AS n FROM events GROUP BY _batch, _key;
INSERT INTO running_counts SELECT _key, count(*), sum(amount) FROM events GROUP BY _key;
