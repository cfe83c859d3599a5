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
                    Input::Events { keys } => {
                        let r = row(i, keys);
                        writeln!(
                            out,
                            "{{\"key\":{},\"page\":\"p{:02}\",\"amount\":{}}}",
                            r.0, r.1, r.2
                        )?;
                    }
                    Input::Bids => writeln!(out, "{}", bid(i))?,
                }
            }
            out.flush()?;
            drop(out);
            file.set_modified(base + Duration::from_secs(f))?;
        }
        std::fs::write(&marker, "")?;
        Ok(data)
    }
}

/// Row `i`: a key spread over `keys` by a multiplicative hash, its page and its amount.
pub fn row(i: u64, keys: u64) -> (u64, u64, u64) {
    (i.wrapping_mul(2_654_435_761) % keys, i % PAGES, i % 500)
}

/// Auctions the bids go to (q17 groups them by auction and day).
pub const AUCTIONS: u64 = 10_000;
const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
/// 2026-11-01T00:00:00Z; a bid every 100 ms, so 4M bids span about 4.6 days.
const FIRST_BID_MS: u64 = 1_793_491_200_000;

/// Bid `i` as a jsonl line, after Nexmark's generator: prices spread over five decades (as its
/// log-uniform prices are), so each of q17's three price ranges holds bids.
pub fn bid(i: u64) -> String {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
    let auction = 1000 + h % AUCTIONS;
    let bidder = 1000 + (h / AUCTIONS) % 100_000;
    let price = (1000 + (h >> 20) % 9000) * 10u64.pow(((h >> 40) % 5) as u32);
    let channel = CHANNELS[(i % 4) as usize];
    format!(
        "{{\"auction\":{auction},\"bidder\":{bidder},\"price\":{price},\"channel\":\"{channel}\",\"url\":\"https://www.nexmark.com/{}/item.htm?query=1&channel_id={}\",\"date_time\":{}}}",
        channel.to_lowercase(),
        h % 1000,
        FIRST_BID_MS + i * 100
    )
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
