//! A service's stdout and stderr: forwarded into the orchestrator's log line by line under a rate limit
//! (the excess is dropped and counted, so a child writing tens of megabytes a second costs a few large
//! reads, not a core and gigabytes of log), or written to a file of the service's own with size-based
//! rotation (`file`, `file.1` .. `file.N`, as supervisord's `stdout_logfile_maxbytes`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::time::Instant;

use crate::config::OutputSettings;
use crate::telemetry::metrics::ServiceMetrics;

/// Longest line forwarded as one log event; longer lines are split.
const MAX_LINE: usize = 16 * 1024;
/// Read buffer of each forwarded stream (a thousand idle children keep two of these each).
const READ_BUFFER: usize = 512;
/// Read size while output is being dropped or written to a file.
const CHUNK: usize = 64 * 1024;

/// The output pipes of a child process.
pub struct Output {
    /// Its standard output.
    pub stdout: pipe::Receiver,
    /// Its standard error.
    pub stderr: pipe::Receiver,
}

/// Starts forwarding `output` of `service` as `settings` say; the tasks end when the pipes close.
pub(super) fn forward(service: &str, output: Output, settings: &OutputSettings, metrics: ServiceMetrics) {
    if let Some(path) = &settings.file {
        match RotatingFile::open(path.clone(), settings.max_size, settings.backups) {
            Ok(file) => {
                let file = Arc::new(Mutex::new(file));
                tokio::spawn(to_file(output.stdout, file.clone()));
                tokio::spawn(to_file(output.stderr, file));
                return;
            }
            Err(error) => tracing::error!(
                service,
                path = %path.display(),
                %error,
                "cannot open the output file: forwarding into the log instead"
            ),
        }
    }
    let limiter = Arc::new(Mutex::new(Limiter::new(settings.rate_limit, Instant::now())));
    tokio::spawn(to_log(
        service.to_owned(),
        "stdout",
        output.stdout,
        limiter.clone(),
        metrics.clone(),
    ));
    tokio::spawn(to_log(
        service.to_owned(),
        "stderr",
        output.stderr,
        limiter,
        metrics,
    ));
}

/// A token bucket of lines: `rate` a second, bursts of one second's worth.
#[derive(Debug)]
pub(super) struct Limiter {
    rate: f64,
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

impl Limiter {
    /// `rate` lines a second; 0 means no limit.
    pub(super) fn new(rate: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            refilled: now,
            dropped: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
    }

    /// Whether a line may be forwarded now; returns the lines dropped since the last one that was.
    pub(super) fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.rate == 0.0 {
            return Some(0);
        }
        self.refill(now);
        if self.tokens < 1.0 {
            self.dropped += 1;
            return None;
        }
        self.tokens -= 1.0;
        Some(std::mem::take(&mut self.dropped))
    }

    /// Whether a line would be admitted now (without taking it).
    pub(super) fn has_room(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        self.refill(now);
        self.tokens >= 1.0
    }
}

fn lock(limiter: &Mutex<Limiter>) -> std::sync::MutexGuard<'_, Limiter> {
    limiter.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Forwards one stream into the log, one event per line. While the limit is reached, whole chunks are read
/// and their lines passed to the limiter, which mostly counts them, instead of one small read per line.
/// Invalid UTF-8 is replaced rather than ending the forwarding (which would block the child on a full pipe).
async fn to_log(
    service: String,
    stream: &'static str,
    output: impl AsyncRead + Unpin,
    limiter: Arc<Mutex<Limiter>>,
    metrics: ServiceMetrics,
) {
    let mut reader = BufReader::with_capacity(READ_BUFFER, output);
    let deliver = |line: &[u8]| {
        let admitted = lock(&limiter).admit(Instant::now());
        match admitted {
            None => metrics.output_dropped(1),
            Some(dropped) => {
                if dropped > 0 {
                    tracing::warn!(target: "fog_orchestrator::service_output", service = %service, dropped, "output over the rate limit: {dropped} lines dropped");
                }
                let text = String::from_utf8_lossy(line);
                let text = text.trim_end_matches(['\n', '\r']);
                tracing::info!(target: "fog_orchestrator::service_output", service = %service, stream, "{text}");
            }
        }
    };
    // `line` may hold the start of a line that a chunk cut.
    let mut line = Vec::new();
    let mut chunk = Vec::new();
    loop {
        if !lock(&limiter).has_room(Instant::now()) {
            let buffered = reader.buffer().len();
            let read = if buffered > 0 {
                chunk.clear();
                chunk.extend_from_slice(reader.buffer());
                reader.consume(buffered);
                buffered
            } else {
                chunk.resize(CHUNK, 0);
                match reader.get_mut().read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => read,
                }
            };
            for piece in chunk[..read].split_inclusive(|&b| b == b'\n') {
                line.extend_from_slice(piece);
                if piece.ends_with(b"\n") || line.len() >= MAX_LINE {
                    deliver(&line);
                    line.clear();
                }
            }
            continue;
        }
        let limit = (MAX_LINE - line.len().min(MAX_LINE)) as u64;
        match (&mut reader).take(limit).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        deliver(&line);
        line.clear();
    }
    if !line.is_empty() {
        deliver(&line);
    }
}

/// Writes one stream to the service's file as it comes.
async fn to_file(output: impl AsyncRead + Unpin, file: Arc<Mutex<RotatingFile>>) {
    let mut output = output;
    let mut chunk = vec![0; CHUNK];
    loop {
        let read = match output.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = file.write(&chunk[..read]) {
            // Keep draining the pipe (a full pipe would block the service); say so once per second at most.
            file.report(error);
        }
    }
}

/// An append-only file that is rotated before a write would take it past `max_size`.
#[derive(Debug)]
pub(super) struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    backups: u32,
    last_error: Option<std::time::Instant>,
}

impl RotatingFile {
    /// Opens (creating) `path` for appending.
    pub(super) fn open(path: PathBuf, max_size: u64, backups: u32) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            file,
            size,
            max_size,
            backups,
            last_error: None,
        })
    }

    /// Appends `bytes`, rotating whenever the next part would not fit: a file never exceeds `max_size`.
    /// A part ends at the last newline that fits, when there is one.
    pub(super) fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let room = self.max_size.saturating_sub(self.size) as usize;
            if room == 0 || (room < bytes.len() && self.size > 0 && !bytes[..room].contains(&b'\n')) {
                self.rotate()?;
                continue;
            }
            let take = if bytes.len() <= room {
                bytes.len()
            } else {
                bytes[..room]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(room, |newline| newline + 1)
            };
            self.file.write_all(&bytes[..take])?;
            self.size += take as u64;
            bytes = &bytes[take..];
        }
        Ok(())
    }

    /// `file.N-1` → `file.N`, ..., `file` → `file.1`, and a fresh `file`; with no backups, truncates.
    fn rotate(&mut self) -> std::io::Result<()> {
        for index in (1..self.backups).rev() {
            let from = numbered(&self.path, index);
            if from.exists() {
                std::fs::rename(&from, numbered(&self.path, index + 1))?;
            }
        }
        if self.backups > 0 {
            std::fs::rename(&self.path, numbered(&self.path, 1))?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }

    fn report(&mut self, error: std::io::Error) {
        let now = std::time::Instant::now();
        if self
            .last_error
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            self.last_error = Some(now);
            tracing::error!(path = %self.path.display(), %error, "cannot write service output");
        }
    }
}

fn numbered(path: &Path, index: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_admits_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut limiter = Limiter::new(10, start);
        for _ in 0..10 {
            assert_eq!(limiter.admit(start), Some(0));
        }
        assert_eq!(limiter.admit(start), None);
        assert_eq!(limiter.admit(start), None);
        assert_eq!(limiter.admit(start + Duration::from_millis(100)), Some(2));
        assert_eq!(limiter.admit(start + Duration::from_millis(100)), None);
        let mut unlimited = Limiter::new(0, start);
        assert!((0..100_000).all(|_| unlimited.admit(start) == Some(0)));
    }

    #[test]
    fn the_file_rotates_and_keeps_its_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.log");
        let mut file = RotatingFile::open(path.clone(), 10, 2).unwrap();
        for chunk in ["aaaaaaaa\n", "bbbbbbbb\n", "cccccccc\n", "dddddddd\n"] {
            file.write(chunk.as_bytes()).unwrap();
        }
        // A write larger than the limit is split at newlines, never overfilling a file.
        let mut big = RotatingFile::open(dir.path().join("big.log"), 10, 5).unwrap();
        big.write(b"1234\n5678\nabcd\nefgh\nijkl\n").unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("big.log"), "ijkl\n");
        assert_eq!(read("big.log.1"), "abcd\nefgh\n");
        assert_eq!(read("big.log.2"), "1234\n5678\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "dddddddd\n");
        assert_eq!(std::fs::read_to_string(numbered(&path, 1)).unwrap(), "cccccccc\n");
        assert_eq!(std::fs::read_to_string(numbered(&path, 2)).unwrap(), "bbbbbbbb\n");
        assert!(!numbered(&path, 3).exists(), "only two backups");
    }
}
