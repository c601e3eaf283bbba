//! Helpers shared by the bench binaries.

/// Peak resident set size of this process (VmHWM), in KiB; 0 when unknown.
pub fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples `RssAnon` (anonymous memory: heap, not file-backed maps) every 20 ms until the
/// returned guard is finished; [`AnonPeak::finish`] gives the peak in KiB.
pub struct AnonPeak {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl AnonPeak {
    /// Starts sampling.
    pub fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(status_kib("RssAnon:"));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            peak.max(status_kib("RssAnon:"))
        });
        Self { stop, handle }
    }

    /// Stops sampling; the peak anonymous RSS in KiB.
    pub fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// An event channel that, when `BENCH_PHASES` is set, prints on stderr the seconds since
/// `start` at which progress passes each tenth (and reaches 1 % and 100 %) and each artifact
/// becomes ready: where a build spends its time. Events are read on a thread of their own.
pub fn phase_printer(start: std::time::Instant) -> exportcore::run::EventSender {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<exportcore::RunEvent>();
    let on = std::env::var_os("BENCH_PHASES").is_some();
    std::thread::spawn(move || {
        let mut last = 0u8;
        while let Some(e) = rx.blocking_recv() {
            if !on {
                continue;
            }
            let what = match &e {
                exportcore::RunEvent::Progress { progress, .. } => {
                    let p = progress.percent;
                    if p / 10 == last / 10 && p != 1 && p != 100 {
                        continue;
                    }
                    last = p;
                    format!("progress {p}%")
                }
                exportcore::RunEvent::ArtifactReady { path, .. } => format!("ready {path}"),
                other => format!("{other:?}").chars().take(40).collect(),
            };
            eprintln!("{:8.3} {what}", start.elapsed().as_secs_f64());
        }
    });
    tx
}

/// The median of `xs` (the upper one of an even count); `xs` must not be empty.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `512K`, `100M`, `1G` or plain bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_uppercase();
    let (num, mul) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (&s[..], 1),
    };
    num.parse::<u64>().ok().map(|n| n * mul)
}

/// The value after `--name` on the command line.
pub fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].as_str())
}

/// Writes `bytes` of incompressible, deterministic bytes (xorshift) to `w`.
pub fn write_incompressible(w: &mut dyn std::io::Write, bytes: u64, seed: u64) -> std::io::Result<()> {
    let mut block = vec![0u8; 1 << 20];
    let mut state = seed | 1;
    let mut left = bytes;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let take = left.min(block.len() as u64) as usize;
        w.write_all(&block[..take])?;
        left -= take as u64;
    }
    Ok(())
}
