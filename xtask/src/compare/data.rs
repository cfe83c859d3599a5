//! The input every engine reads: jsonl files generated once and cached under target/.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;

/// A directory of jsonl files holding `rows` rows of `{key, page, amount}`.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub rows: u64,
}

/// Pages per dataset, the key of the per-batch count.
pub const PAGES: u64 = 20;

impl Dataset {
    /// Generates the dataset under `root` unless a complete copy is there already.
    pub fn ensure(root: &Path, rows: u64, files: u64, keys: u64) -> anyhow::Result<Dataset> {
        let dir = root.join(format!("rows{rows}-keys{keys}-files{files}"));
        let data = Dataset {
            dir: dir.join("data"),
            rows,
        };
        let marker = dir.join("complete");
        if marker.exists() {
            return Ok(data);
        }
        eprintln!(
            "==> generating {rows} rows over {keys} keys in {}",
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
                let r = row(i, keys);
                writeln!(
                    out,
                    "{{\"key\":{},\"page\":\"p{:02}\",\"amount\":{}}}",
                    r.0, r.1, r.2
                )?;
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
    fn files_split_the_rows_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dataset::ensure(dir.path(), 10, 3, 5).unwrap();
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
