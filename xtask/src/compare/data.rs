//! The input every engine reads: jsonl files generated once and cached under target/.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;

use super::queries::Input;

/// A directory of jsonl files holding `rows` rows of an [`Input`].
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub rows: u64,
}

/// Pages per dataset, the key of the per-batch count.
pub const PAGES: u64 = 20;

impl Dataset {
    /// Generates the dataset under `root` unless a complete copy is there already.
    pub fn ensure(root: &Path, input: Input, rows: u64, files: u64) -> anyhow::Result<Dataset> {
        let dir = root.join(match input {
            Input::Events { keys } => format!("rows{rows}-keys{keys}-files{files}"),
            Input::Bids => format!("bids{rows}-files{files}"),
            Input::TimedBids => format!("timed-bids{rows}-files{files}"),
            Input::Ads => format!("ads{rows}-files{files}"),
        });
        let data = Dataset {
            dir: dir.join("data"),
            rows,
        };
        let marker = dir.join("complete");
        if marker.exists() {
            return Ok(data);
        }
        eprintln!(
            "==> generating {rows} {} in {}",
            input.name(),
            dir.display()
        );
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&data.dir)?;
        let per_file = rows.div_ceil(files);
        // Spark orders new files by modification time and Sluice by name: make both agree.
        let base = SystemTime::now() - Duration::from_secs(files + 60);
        for f in 0..files {
            let path = data.dir.join(format!("part-{f:05}.jsonl"));
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, &file);
            for i in f * per_file..((f + 1) * per_file).min(rows) {
                match input {
                    Input::Events { keys } => writeln!(out, "{}", event_line(i, keys))?,
                    Input::Bids => writeln!(out, "{}", bid(i))?,
                    Input::TimedBids => writeln!(out, "{}", timed_bid(i))?,
                    Input::Ads => writeln!(out, "{}", ad_event(i))?,
                }
            }
            out.flush()?;
            drop(out);
            file.set_modified(base + Duration::from_secs(f))?;
        }
        if input == Input::Ads {
            write_campaigns(&data.campaigns())?;
        }
        std::fs::write(&marker, "")?;
        Ok(data)
    }

    /// The same rows in `parts` files, each a contiguous run of the originals, beside them
    /// (made once). Flink's file source hands its readers files in no particular order and has
    /// each advance the watermark as it reads; with one file per reader, in event-time order,
    /// none of its rows is late.
    pub fn in_parts(&self, parts: u64) -> anyhow::Result<PathBuf> {
        let dir = self.dir.with_file_name(format!("in{parts}"));
        let marker = dir.join(".complete");
        if marker.exists() {
            return Ok(dir);
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut files: Vec<PathBuf> = (std::fs::read_dir(&self.dir)?.flatten())
            .map(|e| e.path())
            .collect();
        files.sort();
        for (p, chunk) in files
            .chunks(files.len().div_ceil(parts as usize).max(1))
            .enumerate()
        {
            let mut out = std::fs::File::create(dir.join(format!("part-{p:05}.jsonl")))?;
            for f in chunk {
                std::io::copy(&mut std::fs::File::open(f)?, &mut out)?;
            }
        }
        std::fs::write(&marker, "")?;
        Ok(dir)
    }

    /// The ad events' static table of campaigns, beside the events.
    pub fn campaigns(&self) -> PathBuf {
        self.dir.with_file_name("campaigns")
    }
}

/// Row `i`: a key spread over `keys` by a multiplicative hash, its page and its amount.
pub fn row(i: u64, keys: u64) -> (u64, u64, u64) {
    (i.wrapping_mul(2_654_435_761) % keys, i % PAGES, i % 500)
}

/// Row `i` of `{key, page, amount}` over `keys` keys as a jsonl line.
pub fn event_line(i: u64, keys: u64) -> String {
    let (key, page, amount) = row(i, keys);
    format!("{{\"key\":{key},\"page\":\"p{page:02}\",\"amount\":{amount}}}")
}

/// Auctions the bids go to (q17 groups them by auction and day).
pub const AUCTIONS: u64 = 10_000;
const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
/// 2026-11-01T00:00:00Z; a bid every 100 ms, so 4M bids span about 4.6 days.
const FIRST_BID_MS: u64 = 1_793_491_200_000;

/// Bid `i` as a jsonl line, after Nexmark's generator: prices spread over five decades (as its
/// log-uniform prices are), so each of q17's three price ranges holds bids.
pub fn bid(i: u64) -> String {
    bid_at(i, &(FIRST_BID_MS + i * 100).to_string())
}

/// Timed bids per second of event time: 4M bids span 400 s, or forty 10-second windows.
pub const TIMED_BIDS_PER_SECOND: u64 = 10_000;

/// Bid `i` with `date_time` an ISO timestamp, `TIMED_BIDS_PER_SECOND` of them per second.
pub fn timed_bid(i: u64) -> String {
    bid_at(
        i,
        &format!("\"{}\"", event_time(i * 1000 / TIMED_BIDS_PER_SECOND)),
    )
}

/// Bid `i` with `date_time` as the JSON value `date_time`.
fn bid_at(i: u64, date_time: &str) -> String {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
    let auction = 1000 + h % AUCTIONS;
    let bidder = 1000 + (h / AUCTIONS) % 100_000;
    let price = (1000 + (h >> 20) % 9000) * 10u64.pow(((h >> 40) % 5) as u32);
    let channel = CHANNELS[(i % 4) as usize];
    format!(
        "{{\"auction\":{auction},\"bidder\":{bidder},\"price\":{price},\"channel\":\"{channel}\",\"url\":\"https://www.nexmark.com/{}/item.htm?query=1&channel_id={}\",\"date_time\":{date_time}}}",
        channel.to_lowercase(),
        h % 1000,
    )
}

/// Ads the events show, and ads per campaign.
pub const ADS: u64 = 1_000;
const ADS_PER_CAMPAIGN: u64 = 10;
/// Ad events per second of event time: 4M events span 400 s, or forty 10-second windows.
pub const AD_EVENTS_PER_SECOND: u64 = 10_000;
/// Pages the ads are shown on (the windowed count's key).
pub const AD_PAGES: u64 = 100;
const EVENT_TYPES: [&str; 3] = ["view", "click", "purchase"];

/// Ad event `i` as a jsonl line, after the Yahoo streaming benchmark's events, in event-time
/// order from 2026-11-01T00:00:00 (no zone: every engine reads it as UTC).
pub fn ad_event(i: u64) -> String {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
    let ms = i * 1000 / AD_EVENTS_PER_SECOND;
    format!(
        "{{\"user_id\":{},\"page_id\":{},\"ad_id\":{},\"ad_type\":\"banner\",\"event_type\":\"{}\",\"event_time\":\"{}\",\"ip_address\":\"10.0.0.1\"}}",
        (h >> 30) % 100_000,
        (h >> 20) % AD_PAGES,
        h % ADS,
        EVENT_TYPES[((h / ADS) % 3) as usize],
        event_time(ms)
    )
}

/// `ms` after 2026-11-01T00:00:00 as ISO 8601 without a zone, to the millisecond.
pub fn event_time(ms: u64) -> String {
    let (s, ms) = (ms / 1000, ms % 1000);
    let (d, s) = (s / 86_400, s % 86_400);
    format!(
        "2026-11-{:02}T{:02}:{:02}:{:02}.{ms:03}",
        1 + d,
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

fn write_campaigns(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let rows: String = (0..ADS)
        .map(|ad| {
            format!(
                "{{\"ad_id\":{ad},\"campaign_id\":{}}}\n",
                ad / ADS_PER_CAMPAIGN
            )
        })
        .collect();
    Ok(std::fs::write(dir.join("campaigns.jsonl"), rows)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cover_the_range_evenly() {
        let mut seen = vec![0u32; 1000];
        for i in 0..100_000 {
            seen[row(i, 1000).0 as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n == 100), "uneven: {:?}", &seen[..10]);
    }

    #[test]
    fn bids_fall_in_every_price_range_and_over_several_days() {
        let bids: Vec<serde_json::Value> = (0..10_000)
            .map(|i| serde_json::from_str(&bid(i)).unwrap())
            .collect();
        let prices: Vec<u64> = bids.iter().map(|b| b["price"].as_u64().unwrap()).collect();
        assert!(prices.iter().any(|&p| p < 10_000));
        assert!(prices.iter().any(|&p| (10_000..1_000_000).contains(&p)));
        assert!(prices.iter().any(|&p| p >= 1_000_000));
        let auctions: std::collections::BTreeSet<u64> = bids
            .iter()
            .map(|b| b["auction"].as_u64().unwrap())
            .collect();
        assert!(auctions.len() > 6_000, "{} auctions", auctions.len());
        assert!(auctions.iter().any(|a| a % 123 == 0));
        let days = |i: u64| (FIRST_BID_MS + i * 100) / 86_400_000;
        assert_eq!(days(4_000_000) - days(0), 4);
    }

    #[test]
    fn timed_bids_are_the_bids_with_iso_times_in_order() {
        let parse = |line: String| serde_json::from_str::<serde_json::Value>(&line).unwrap();
        let (plain, timed) = (parse(bid(12_345)), parse(timed_bid(12_345)));
        for field in ["auction", "bidder", "price", "channel", "url"] {
            assert_eq!(plain[field], timed[field], "{field}");
        }
        assert_eq!(timed["date_time"], "2026-11-01T00:00:01.234");
        let times: Vec<String> = (0..30_000)
            .map(|i| {
                parse(timed_bid(i))["date_time"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn ad_events_run_in_event_time_order_over_every_ad_and_type() {
        assert_eq!(event_time(0), "2026-11-01T00:00:00.000");
        assert_eq!(
            event_time(86_400_000 + 3_723_004),
            "2026-11-02T01:02:03.004"
        );
        let events: Vec<serde_json::Value> = (0..30_000)
            .map(|i| serde_json::from_str(&ad_event(i)).unwrap())
            .collect();
        let field = |k: &str| -> std::collections::BTreeSet<String> {
            events.iter().map(|e| e[k].to_string()).collect()
        };
        assert_eq!(field("ad_id").len() as u64, ADS);
        assert_eq!(field("page_id").len() as u64, AD_PAGES);
        assert_eq!(field("event_type").len(), 3);
        let times: Vec<&str> = events
            .iter()
            .map(|e| e["event_time"].as_str().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(times[29_999], "2026-11-01T00:00:02.999");
    }

    #[test]
    fn parts_join_runs_of_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dataset::ensure(dir.path(), Input::Events { keys: 5 }, 10, 5).unwrap();
        let parts = d.in_parts(2).unwrap();
        let lines = |name: &str| -> Vec<String> {
            let text = std::fs::read_to_string(parts.join(name)).unwrap();
            text.lines().map(str::to_string).collect()
        };
        let (a, b) = (lines("part-00000.jsonl"), lines("part-00001.jsonl"));
        assert_eq!((a.len(), b.len()), (6, 4));
        assert_eq!(a[0], "{\"key\":0,\"page\":\"p00\",\"amount\":0}");
        assert_eq!(b[3], "{\"key\":4,\"page\":\"p09\",\"amount\":9}");
    }

    #[test]
    fn files_split_the_rows_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dataset::ensure(dir.path(), Input::Events { keys: 5 }, 10, 3).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&d.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let lines: Vec<usize> = names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
            .collect();
        assert_eq!(lines, vec![4, 4, 2]);
        let modified = |p: &PathBuf| std::fs::metadata(p).unwrap().modified().unwrap();
        assert!(modified(&names[0]) < modified(&names[1]));
        let first = std::fs::read_to_string(&names[0]).unwrap();
        assert_eq!(
            first.lines().next().unwrap(),
            "{\"key\":0,\"page\":\"p00\",\"amount\":0}"
        );
    }
}
