//! The queries every engine runs, in Sluice's SQL; the peers' own spellings of them are in
//! xtask/peers/ under the same names.

use super::checksum::Spec;

/// What a query reads: the jsonl rows data.rs writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `{key, page, amount}` over `keys` keys.
    Events { keys: u64 },
    /// Nexmark's bids: `{auction, bidder, price, channel, url, date_time}`.
    Bids,
    /// The same bids in event-time order, `date_time` a timestamp with a watermark, 10,000 per
    /// second of event time (the windowed queries).
    TimedBids,
    /// The Yahoo benchmark's ad events, in event-time order, and a static table of campaigns.
    Ads,
}

impl Input {
    pub fn name(self) -> &'static str {
        match self {
            Input::Events { .. } => "events",
            Input::Bids => "bids",
            Input::TimedBids => "timed_bids",
            Input::Ads => "ads",
        }
    }

    /// Rows per second of event time, for an input with a watermark.
    pub fn events_per_second(self) -> Option<u64> {
        match self {
            Input::TimedBids => Some(super::data::TIMED_BIDS_PER_SECOND),
            Input::Ads => Some(super::data::AD_EVENTS_PER_SECOND),
            Input::Events { .. } | Input::Bids => None,
        }
    }

    /// The keys the rows spread over (none for bids, whose state is per auction and day).
    pub fn keys(self) -> u64 {
        match self {
            Input::Events { keys } => keys,
            Input::Bids | Input::TimedBids | Input::Ads => 0,
        }
    }

    /// For the report.
    pub fn describe(self) -> String {
        match self {
            Input::Events { keys } => format!("`{{key, page, amount}}` over {keys} keys"),
            Input::Bids => format!(
                "Nexmark bids `{{auction, bidder, price, channel, url, date_time}}` over {} auctions, one every 100 ms of event time",
                super::data::AUCTIONS
            ),
            Input::TimedBids => format!(
                "the same bids in event-time order, {} per second of event time, `date_time` an ISO timestamp with a {} s watermark delay",
                super::data::TIMED_BIDS_PER_SECOND,
                WATERMARK_DELAY_MS / 1000
            ),
            Input::Ads => format!(
                "the Yahoo benchmark's ad events `{{user_id, page_id, ad_id, ad_type, event_type, event_time, ip_address}}`, {} per second of event time, over {} ads on {} pages; a static table maps the ads to {} campaigns",
                super::data::AD_EVENTS_PER_SECOND,
                super::data::ADS,
                super::data::AD_PAGES,
                super::data::ADS / 10
            ),
        }
    }

    /// The source table `src` in Sluice's SQL.
    pub fn columns(self) -> &'static str {
        match self {
            Input::Events { .. } => "key BIGINT, page TEXT, amount BIGINT",
            Input::Bids => {
                "auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT, date_time BIGINT"
            }
            Input::TimedBids => {
                "auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT, date_time TIMESTAMP, WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND"
            }
            Input::Ads => {
                "user_id BIGINT, page_id BIGINT, ad_id BIGINT, ad_type TEXT, event_type TEXT, event_time TIMESTAMP, ip_address TEXT, WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND"
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// count(*) and sum(amount) per key, kept across batches, in update mode.
    RunningCount,
    /// count(*) and sum(amount) per page within each batch.
    BatchCount,
    /// Nexmark q0: every bid passed through.
    Q0,
    /// Nexmark q1: each bid's price in euros.
    Q1,
    /// Nexmark q2: the bids of every 123rd auction.
    Q2,
    /// Nexmark q5: the auctions with the most bids in each 10-second window sliding by 2.
    Q5,
    /// Nexmark q7: the bids at the highest price of their 10-second window.
    Q7,
    /// Nexmark q17: per auction and day, bids in three price ranges and price statistics.
    Q17,
    /// Ad events counted per page in 10-second tumbling windows, append mode.
    Windowed,
    /// The Yahoo job: views joined to their campaigns, counted per campaign in 10-second
    /// windows, append mode.
    Yahoo,
}

/// The watermark delay of the event-time inputs, in every engine's query.
pub const WATERMARK_DELAY_MS: u64 = 5_000;

const COUNTS: Spec = Spec {
    update_key: &["key"],
    weight_key: "key",
    weight_by: "n",
    sums: &["n", "total"],
};

/// The bid columns q0 and q1 keep, summed and weighted the same way.
const BIDS: Spec = Spec {
    update_key: &[],
    weight_key: "auction",
    weight_by: "bidder",
    sums: &["bidder", "price"],
};

impl Query {
    /// The name the peers' scripts know the query by.
    pub fn peer_name(self) -> &'static str {
        match self {
            Query::RunningCount => "running_count",
            Query::BatchCount => "batch_count",
            Query::Q0 => "q0",
            Query::Q1 => "q1",
            Query::Q2 => "q2",
            Query::Q5 => "q5",
            Query::Q7 => "q7",
            Query::Q17 => "q17",
            Query::Windowed => "windowed",
            Query::Yahoo => "yahoo",
        }
    }

    /// The sink's columns and the SELECT that fills it, over `src`.
    pub fn sluice(self) -> (&'static str, &'static str) {
        match self {
            Query::RunningCount => (
                "key BIGINT, n BIGINT, total BIGINT",
                "SELECT key, count(*) AS n, sum(amount) AS total FROM src GROUP BY key",
            ),
            Query::BatchCount => (
                "batch BIGINT, page TEXT, n BIGINT, total BIGINT",
                "SELECT _batch AS batch, page, count(*) AS n, sum(amount) AS total FROM src GROUP BY _batch, page",
            ),
            Query::Q0 => (
                "auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT, date_time BIGINT",
                "SELECT auction, bidder, price, channel, url, date_time FROM src",
            ),
            Query::Q1 => (
                "auction BIGINT, bidder BIGINT, price DOUBLE, date_time BIGINT",
                "SELECT auction, bidder, 0.908 * price AS price, date_time FROM src",
            ),
            Query::Q2 => (
                "auction BIGINT, price BIGINT",
                "SELECT auction, price FROM src WHERE auction % 123 = 0",
            ),
            Query::Q5 => (
                "auction BIGINT, num BIGINT, window_end TIMESTAMP",
                "SELECT a.auction, a.num, a.window_end FROM (
  SELECT auction, count(*) AS num, window_start, window_end
  FROM HOP(src, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end
) a JOIN (
  SELECT max(num) AS maxn, window_start, window_end FROM (
    SELECT auction, count(*) AS num, window_start, window_end
    FROM HOP(src, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end
  ) c GROUP BY window_start, window_end
) m ON a.window_start = m.window_start AND a.window_end = m.window_end AND a.num >= m.maxn",
            ),
            Query::Q7 => (
                "auction BIGINT, price BIGINT, bidder BIGINT, date_time TIMESTAMP, window_end TIMESTAMP",
                "SELECT b.auction, b.price, b.bidder, b.date_time, m.window_end FROM src b JOIN (
  SELECT max(price) AS maxprice, window_end
  FROM TUMBLE(src, date_time, INTERVAL '10' SECOND) GROUP BY window_start, window_end
) m ON b.price = m.maxprice
WHERE b.date_time BETWEEN m.window_end - INTERVAL '10' SECOND AND m.window_end",
            ),
            Query::Q17 => (
                "auction BIGINT, day TEXT, total_bids BIGINT, rank1_bids BIGINT, rank2_bids BIGINT, rank3_bids BIGINT, min_price BIGINT, max_price BIGINT, avg_price DOUBLE, sum_price BIGINT",
                "SELECT auction, to_char(to_timestamp_millis(date_time), '%Y-%m-%d') AS day,
  count(*) AS total_bids,
  count(*) FILTER (WHERE price < 10000) AS rank1_bids,
  count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
  count(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
  min(price) AS min_price, max(price) AS max_price, avg(price) AS avg_price, sum(price) AS sum_price
FROM src GROUP BY auction, to_char(to_timestamp_millis(date_time), '%Y-%m-%d')",
            ),
            Query::Windowed => (
                "window_start TIMESTAMP, page_id BIGINT, n BIGINT",
                "SELECT window_start, page_id, count(*) AS n FROM TUMBLE(src, event_time, INTERVAL '10' SECOND) GROUP BY window_start, window_end, page_id",
            ),
            Query::Yahoo => (
                "window_start TIMESTAMP, campaign_id BIGINT, views BIGINT",
                "SELECT date_bin(INTERVAL '10 seconds', e.event_time) AS window_start, c.campaign_id, count(*) AS views
FROM src e JOIN campaigns c ON e.ad_id = c.ad_id WHERE e.event_type = 'view'
GROUP BY date_bin(INTERVAL '10 seconds', e.event_time), c.campaign_id",
            ),
        }
    }

    /// What Sluice's job declares besides `src` and the sink: the output mode of a windowed
    /// query, and the static table a join reads (its files in `campaigns`).
    pub fn sluice_preamble(self, campaigns: &std::path::Path) -> String {
        match self {
            Query::Windowed | Query::Q5 | Query::Q7 => "SET 'output_mode' = 'append';\n".into(),
            Query::Yahoo => format!(
                "SET 'output_mode' = 'append';
CREATE TABLE campaigns (ad_id BIGINT, campaign_id BIGINT)
  WITH (connector = 'files', path = '{}', format = 'jsonl', static = 'true');
",
                campaigns.display()
            ),
            _ => String::new(),
        }
    }

    /// How the outputs are compared. q17's average is left out: Flink's AVG of a BIGINT is a
    /// BIGINT (truncated), Sluice's and Spark's a double.
    pub fn checksum(self) -> Spec {
        match self {
            Query::RunningCount => COUNTS,
            Query::BatchCount => Spec {
                update_key: &[],
                weight_key: "page",
                ..COUNTS
            },
            Query::Q0 | Query::Q1 => BIDS,
            Query::Q2 => Spec {
                weight_by: "price",
                sums: &["price"],
                ..BIDS
            },
            Query::Q5 => Spec {
                weight_by: "num",
                sums: &["num"],
                ..BIDS
            },
            Query::Q7 => Spec {
                weight_by: "price",
                sums: &["bidder", "price"],
                ..BIDS
            },
            Query::Q17 => Spec {
                update_key: &["auction", "day"],
                weight_key: "auction",
                weight_by: "total_bids",
                sums: &[
                    "total_bids",
                    "rank1_bids",
                    "rank2_bids",
                    "rank3_bids",
                    "min_price",
                    "max_price",
                    "sum_price",
                ],
            },
            Query::Windowed => Spec {
                update_key: &[],
                weight_key: "page_id",
                weight_by: "n",
                sums: &["n"],
            },
            Query::Yahoo => Spec {
                update_key: &[],
                weight_key: "campaign_id",
                weight_by: "views",
                sums: &["views"],
            },
        }
    }

    /// The expression over an output row that is the end of its window, for a windowed query:
    /// Flink closes every window at the end of a bounded input, Sluice and Spark only those the
    /// final watermark passed, so Flink's checksum keeps the rows whose window ends by then.
    pub fn window_end(self) -> Option<&'static str> {
        match self {
            Query::Windowed | Query::Yahoo => Some("window_start + INTERVAL '10' SECOND"),
            Query::Q5 | Query::Q7 => Some("window_end"),
            _ => None,
        }
    }
}
