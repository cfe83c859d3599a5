//! CPU time and memory of an engine's processes, read from /proc while it runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Linux reports utime and stime in USER_HZ ticks, 100 per second on every architecture.
const TICKS_PER_SECOND: u64 = 100;

/// Which processes count as the engine: descendants of `root` (and `root` itself when
/// `include_root`), kept only when `keep` accepts their command name.
#[derive(Clone)]
pub struct Tree {
    pub root: u32,
    pub include_root: bool,
    pub keep: fn(&str) -> bool,
}

#[derive(Default)]
struct Totals {
    /// Last seen utime + stime per pid, so processes that exited still count.
    ticks: HashMap<u32, u64>,
    peak_rss_bytes: u64,
}

/// Samples a process tree every 50 ms on its own thread until dropped.
pub struct Sampler {
    totals: Arc<Mutex<Totals>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    tree: Tree,
}

impl Sampler {
    pub fn start(tree: Tree) -> Sampler {
        let totals = Arc::new(Mutex::new(Totals::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (totals, stop, tree) = (totals.clone(), stop.clone(), tree.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sample(&tree, &totals);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Sampler {
            totals,
            stop,
            thread: Some(thread),
            tree,
        }
    }

    /// CPU time (user + system) of every process of the tree so far, in milliseconds.
    pub fn cpu_ms(&self) -> u64 {
        sample(&self.tree, &self.totals);
        let t = self.totals.lock().expect("sampler lock");
        t.ticks.values().sum::<u64>() * 1000 / TICKS_PER_SECOND
    }

    /// The largest sum of resident memory over the tree's processes seen at one sample.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.totals.lock().expect("sampler lock").peak_rss_bytes
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sample(tree: &Tree, totals: &Mutex<Totals>) {
    let procs = processes();
    let members = members(tree, &procs);
    let mut rss = 0;
    let mut t = totals.lock().expect("sampler lock");
    for p in members {
        t.ticks.insert(p.pid, p.ticks);
        rss += p.rss_bytes;
    }
    t.peak_rss_bytes = t.peak_rss_bytes.max(rss);
}

#[derive(Debug, Clone, PartialEq)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub ticks: u64,
    pub rss_bytes: u64,
}

/// The processes of `tree` among `procs`.
pub fn members<'a>(tree: &Tree, procs: &'a [Proc]) -> Vec<&'a Proc> {
    let mut inside = vec![tree.root];
    let mut out = Vec::new();
    // Parents are not always listed before children, so grow the set until it is stable.
    let mut grew = true;
    while grew {
        grew = false;
        for p in procs {
            if !inside.contains(&p.pid) && inside.contains(&p.ppid) {
                inside.push(p.pid);
                grew = true;
            }
        }
    }
    for p in procs {
        let is_root = p.pid == tree.root;
        if inside.contains(&p.pid) && (!is_root || tree.include_root) && (tree.keep)(&p.comm) {
            out.push(p);
        }
    }
    out
}

fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(&stat)
        })
        .collect()
}

/// One /proc/PID/stat line: the command name is in parentheses and may hold spaces, so the
/// fields are counted from its closing parenthesis.
pub fn parse_stat(stat: &str) -> Option<Proc> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let pid = stat[..open].trim().parse().ok()?;
    let comm = stat[open + 1..close].to_string();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12) ... rss(21), in pages.
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(Proc {
        pid,
        ppid: num(1)? as u32,
        comm,
        ticks: num(11)? + num(12)?,
        rss_bytes: num(21)? * 4096,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let line = "4242 (sluice executor) S 4000 4242 4000 0 -1 4194560 500 0 0 0 \
                    150 25 0 0 20 0 9 0 1000 123456789 2048 18446744073709551615";
        let p = parse_stat(line).unwrap();
        assert_eq!(p.pid, 4242);
        assert_eq!(p.ppid, 4000);
        assert_eq!(p.comm, "sluice executor");
        assert_eq!(p.ticks, 175);
        assert_eq!(p.rss_bytes, 2048 * 4096);
    }

    #[test]
    fn tree_takes_descendants_filtered_by_name() {
        let p = |pid, ppid, comm: &str| Proc {
            pid,
            ppid,
            comm: comm.into(),
            ticks: 1,
            rss_bytes: 1,
        };
        // A grandchild listed before its parent, and an unrelated process.
        let procs = vec![
            p(30, 20, "sluice-executor"),
            p(10, 1, "xtask"),
            p(20, 10, "sluice-driver"),
            p(21, 10, "sluice"),
            p(99, 1, "sluice-driver"),
        ];
        let tree = Tree {
            root: 10,
            include_root: false,
            keep: |c| c.starts_with("sluice-"),
        };
        let pids: Vec<u32> = members(&tree, &procs).iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![30, 20]);
        let with_root = Tree {
            include_root: true,
            keep: |_| true,
            ..tree
        };
        assert_eq!(members(&with_root, &procs).len(), 4);
    }

    #[test]
    fn sampler_sees_a_busy_child() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .spawn()
            .unwrap();
        let sampler = Sampler::start(Tree {
            root: child.id(),
            include_root: true,
            keep: |_| true,
        });
        std::thread::sleep(Duration::from_millis(400));
        let cpu = sampler.cpu_ms();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(cpu > 0, "the child's loop used no CPU time");
        assert!(sampler.peak_rss_bytes() > 0);
    }
}
