//! Audit records: one JSON line per decision, written off the request path.
//!
//! A Check only serializes its record and queues it; a dedicated thread does the
//! disk I/O. The queue is bounded: in `block` mode a Check waits (asynchronously)
//! for room, so no record is ever lost; in `drop` mode the record is discarded and
//! counted. Records carry fingerprints of credentials, never the credentials.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, Notify};

use crate::config::{AuditConfig, WhenFull};
use crate::ops::metrics::{Sample, StateSource};
use crate::pipeline::decision::{Decision, Outcome};
use crate::pipeline::input::CheckInput;

/// One decision, as written.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    pub time: String,
    pub decision_id: &'a str,
    pub decision: &'static str,
    pub reason: &'static str,
    /// Why, in words (a deny's detail; empty on allow).
    pub detail: String,
    pub status: u16,
    pub policies: &'a [String],
    pub errors: &'a [String],
    pub policy_set: &'a str,
    pub policy_version: &'a str,
    pub peer: Option<PeerRecord<'a>>,
    pub token: Option<TokenRecord<'a>>,
    pub request: RequestRecord<'a>,
    pub cache: &'static str,
    pub shadow: Option<&'a crate::pipeline::decision::ShadowVerdict>,
    pub latency_us: u64,
}

#[derive(Debug, Serialize)]
pub struct PeerRecord<'a> {
    pub spiffe_id: &'a str,
    pub certificate_serial: Option<&'a str>,
    pub certificate_fingerprint: Option<&'a str>,
    pub certificate_not_after: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct TokenRecord<'a> {
    pub iss: &'a str,
    pub sub: &'a str,
    pub jti: Option<&'a str>,
    pub exp: i64,
    /// SHA-256 of the token (first 16 bytes, hex).
    pub fingerprint: &'a str,
}

#[derive(Debug, Serialize)]
pub struct RequestRecord<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    /// `resource.path` as the policies saw it (decoded, case-folded, no trailing `/`).
    pub resource_path: Option<&'a str>,
    /// Envoy's `x-request-id`, to join with Envoy's access log.
    pub request_id: &'a str,
    pub source: Option<String>,
    /// The principal Envoy reported, also when no identity could be established.
    pub source_principal: &'a str,
}

impl<'a> AuditRecord<'a> {
    pub fn new(decision: &'a Decision, input: &'a CheckInput, include_query: bool, now: SystemTime) -> Self {
        let (decision_label, reason, detail, status) = match &decision.outcome {
            Outcome::Allow => ("allow", "allow", String::new(), 200),
            Outcome::Deny(reason) => ("deny", reason.code(), reason.to_string(), reason.http_status()),
        };
        let http = input.http.as_ref();
        let path = http.map_or("", |h| {
            if include_query {
                h.path.as_str()
            } else {
                h.path.split(['?', '#']).next().unwrap_or_default()
            }
        });
        let request_id = http
            .and_then(|h| h.headers.iter().find(|(k, _)| k == "x-request-id").map(|(_, v)| v.as_str()))
            .unwrap_or_default();
        AuditRecord {
            time: rfc3339(now),
            decision_id: &decision.id,
            decision: decision_label,
            reason,
            detail,
            status,
            policies: &decision.policies,
            errors: &decision.errors,
            policy_set: &decision.policy_set,
            policy_version: &decision.policy_version,
            peer: decision.peer.as_ref().map(|p| PeerRecord {
                spiffe_id: p.spiffe_id.as_str(),
                certificate_serial: p.certificate.as_ref().map(|c| c.serial.as_str()),
                certificate_fingerprint: p.certificate.as_ref().map(|c| c.fingerprint()),
                certificate_not_after: p.certificate.as_ref().map(|c| c.not_after),
            }),
            token: decision.token.as_ref().map(|t| TokenRecord {
                iss: &t.iss,
                sub: &t.sub,
                jti: t.jti.as_deref(),
                exp: t.exp,
                fingerprint: &t.fingerprint,
            }),
            request: RequestRecord {
                method: http.map_or("", |h| h.method.as_str()),
                host: http.map_or("", |h| h.host.as_str()),
                path,
                resource_path: decision.resource_path.as_deref(),
                request_id,
                source: input.source.ip.map(|ip| match input.source.port {
                    Some(port) => std::net::SocketAddr::new(ip, port).to_string(),
                    None => ip.to_string(),
                }),
                source_principal: &input.source.principal,
            },
            cache: decision.cache.label(),
            shadow: decision.shadow.as_ref(),
            latency_us: u64::try_from(decision.elapsed.as_micros()).unwrap_or(u64::MAX),
        }
    }
}

impl AuditRecord<'_> {
    /// The record as written: one line of JSON and its newline.
    pub fn to_line(&self) -> serde_json::Result<Vec<u8>> {
        // serde_json starts at 128 bytes and doubles: three reallocations and
        // copies per record (half of the encoding's cost in a cache-hit profile).
        let mut line = Vec::with_capacity(RECORD_CAPACITY);
        serde_json::to_writer(&mut line, self)?;
        line.push(b'\n');
        Ok(line)
    }
}

fn rfc3339(t: SystemTime) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    time::OffsetDateTime::from(t).format(&format).unwrap_or_default()
}

/// Why the audit log could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit file `{path}`: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot start the audit writer: {0}")]
    Thread(std::io::Error),
}

/// The audit log's counters; also its metrics source, which must not hold a
/// sender (the writer ends only when every sender is gone).
#[derive(Debug, Default)]
pub struct AuditStats {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    /// Queued minus taken; briefly negative when the writer takes a record before
    /// its sender counted it.
    queued: AtomicI64,
}

/// One encoded record: a JSON object and its newline (UTF-8, as serde_json writes).
type Line = Vec<u8>;

/// Room for a typical record in one allocation: about 600 bytes without a token,
/// 850 with one; longer paths and deny details grow it.
const RECORD_CAPACITY: usize = 1024;

/// The handle Checks write through. Cloned into the gRPC service; the writer
/// thread ends once every handle is gone and the queue is drained.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Line>,
    /// Wakes the writer before its next tick once the queue is half full.
    pressure: Arc<Notify>,
    /// Room left in the queue at which `pressure` is signalled.
    pressure_at: usize,
    when_full: WhenFull,
    include_query: bool,
    counters: Arc<AuditStats>,
}

impl AuditLog {
    pub fn include_query(&self) -> bool {
        self.include_query
    }

    /// Queues one record. Waits for room in `block` mode; never waits on disk.
    pub async fn write(&self, record: &AuditRecord<'_>) {
        let Some(line) = self.encode(record) else { return };
        let queued = match self.when_full {
            // Only fails once the writer is gone, at the very end of a shutdown.
            WhenFull::Block => self.tx.send(line).await.is_ok(),
            WhenFull::Drop => self.try_queue(line),
        };
        if queued {
            self.queued();
        }
    }

    /// Counts a queued record, and wakes the writer early when the queue fills.
    fn queued(&self) {
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.capacity() <= self.pressure_at {
            self.pressure.notify_one();
        }
    }

    /// Queues one record without ever waiting, whatever `when_full` says: for a
    /// caller on a proxy's worker thread, which must not stall its other requests.
    /// A full queue drops the record and counts it.
    pub fn write_now(&self, record: &AuditRecord<'_>) {
        let Some(line) = self.encode(record) else { return };
        if self.try_queue(line) {
            self.queued();
        }
    }

    fn encode(&self, record: &AuditRecord<'_>) -> Option<Line> {
        match record.to_line() {
            Ok(line) => Some(line),
            Err(e) => {
                tracing::error!("cannot serialize an audit record: {e}");
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn try_queue(&self, line: Line) -> bool {
        match self.tx.try_send(line) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// The counters, for metrics.
    pub fn stats(&self) -> Arc<AuditStats> {
        Arc::clone(&self.counters)
    }

    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }
}

/// The writer thread, owned by the server; `finish` waits for it to drain.
#[derive(Debug)]
pub struct AuditWriter {
    thread: Option<std::thread::JoinHandle<()>>,
    reopen: Arc<AtomicBool>,
}

impl AuditWriter {
    /// Asks the writer to reopen its file before the next record (log rotation).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Waits until every queued record is written and flushed. Call after the last
    /// `AuditLog` handle is dropped (the gRPC server has stopped).
    pub fn finish(mut self) {
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the audit writer panicked");
            }
        }
    }
}

/// The writer's buffer. With std's 8 KiB, a burst cost one `write` per dozen
/// records; records still reach the file within `FLUSH_EVERY`.
const BUFFER: usize = 256 * 1024;

enum Sink {
    Stdout(BufWriter<std::io::Stdout>),
    File(PathBuf, BufWriter<File>),
}

impl Sink {
    fn open(target: &str) -> Result<Sink, AuditError> {
        if target == "stdout" {
            return Ok(Sink::Stdout(BufWriter::with_capacity(BUFFER, std::io::stdout())));
        }
        let path = PathBuf::from(target);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| AuditError::Open { path: path.clone(), source })?;
        Ok(Sink::File(path, BufWriter::with_capacity(BUFFER, file)))
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File(_, w) => w,
        }
    }

    fn reopen(&mut self) {
        if let Sink::File(path, writer) = self {
            let _ = writer.flush();
            match OpenOptions::new().create(true).append(true).open(&*path) {
                Ok(file) => *writer = BufWriter::with_capacity(BUFFER, file),
                Err(e) => tracing::error!(path = %path.display(), "cannot reopen the audit file: {e}"),
            }
        }
    }
}

/// Opens the sink and starts the writer thread.
pub fn start(config: &AuditConfig) -> Result<(AuditLog, AuditWriter), AuditError> {
    let sink = Sink::open(&config.sink)?;
    let (tx, rx) = mpsc::channel::<Line>(config.queue);
    let counters = Arc::new(AuditStats::default());
    let reopen = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(AuditError::Thread)?;
    let pressure = Arc::new(Notify::new());
    let thread = {
        let counters = Arc::clone(&counters);
        let reopen = Arc::clone(&reopen);
        let pressure = Arc::clone(&pressure);
        std::thread::Builder::new()
            .name("cedargate-audit".to_owned())
            .spawn(move || runtime.block_on(write_records(rx, sink, &counters, &reopen, &pressure)))
            .map_err(AuditError::Thread)?
    };
    let log = AuditLog {
        tx,
        pressure,
        pressure_at: config.queue / 2,
        when_full: config.when_full,
        include_query: config.include_query,
        counters,
    };
    Ok((log, AuditWriter { thread: Some(thread), reopen }))
}

/// Records on disk at most this long after their Check (and at shutdown).
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// While records arrive, the writer takes what queued every `TICK` (or sooner,
/// when the queue is half full), rather than being woken for each record: a
/// wake-up costs the Check that sends it a system call, and the writer a switch
/// in and out, which at a few thousand requests a second in Envoy was a fifth of a
/// request's CPU. A tick with nothing queued means quiet: the writer flushes and parks.
const TICK: Duration = Duration::from_millis(20);

/// The writer's loop: park until a record arrives, then take the queue every
/// `TICK` until a tick finds it empty; flush every `FLUSH_EVERY` while records
/// arrive, when they stop, and at the end. Ends when every sender is gone and the
/// queue is empty.
async fn write_records(
    mut rx: mpsc::Receiver<Line>,
    mut sink: Sink,
    counters: &AuditStats,
    reopen: &AtomicBool,
    pressure: &Notify,
) {
    // Checked before every record, so a rotation takes effect at once even in
    // the middle of a burst.
    let write = |sink: &mut Sink, line: Line| {
        if reopen.swap(false, Ordering::AcqRel) {
            sink.reopen();
        }
        counters.queued.fetch_sub(1, Ordering::Relaxed);
        match sink.writer().write_all(&line) {
            Ok(()) => counters.written.fetch_add(1, Ordering::Relaxed),
            Err(_) => counters.failed.fetch_add(1, Ordering::Relaxed),
        };
    };
    let flush = |sink: &mut Sink| {
        if sink.writer().flush().is_err() {
            counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    };
    // Parked: the first record of a burst wakes the writer.
    while let Some(first) = rx.recv().await {
        write(&mut sink, first);
        let mut last_flush = std::time::Instant::now();
        let mut open = true;
        // Ticking: senders queue without waking anyone.
        while open {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = pressure.notified() => {}
            }
            let mut taken = 0;
            loop {
                match rx.try_recv() {
                    Ok(line) => {
                        write(&mut sink, line);
                        taken += 1;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if taken == 0 || last_flush.elapsed() >= FLUSH_EVERY {
                flush(&mut sink);
                last_flush = std::time::Instant::now();
            }
            if taken == 0 {
                break;
            }
        }
        if !open {
            break;
        }
    }
    flush(&mut sink);
}

impl StateSource for AuditStats {
    fn samples(&self) -> Vec<Sample> {
        let c = self;
        vec![
            Sample::Gauge {
                name: "audit_queue_depth",
                help: "Audit records waiting to be written",
                labels: vec![],
                value: c.queued.load(Ordering::Relaxed).max(0),
            },
            Sample::Counter {
                name: "audit_records_written",
                help: "Audit records written to the sink",
                labels: vec![],
                value: c.written.load(Ordering::Relaxed),
            },
            Sample::Counter {
                name: "audit_records_dropped",
                help: "Audit records dropped because the queue was full (when_full = \"drop\", or in-process)",
                labels: vec![],
                value: c.dropped.load(Ordering::Relaxed),
            },
            Sample::Counter {
                name: "audit_write_errors",
                help: "Audit records that could not be serialized or written",
                labels: vec![],
                value: c.failed.load(Ordering::Relaxed),
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &std::path::Path) -> usize {
        std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
    }

    /// Waits (bounded) until `path` holds `n` lines.
    fn wait_for(path: &std::path::Path, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while lines(path) < n {
            assert!(std::time::Instant::now() < deadline, "{} of {n} records on disk", lines(path));
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_lone_record_wakes_the_parked_writer_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let config = AuditConfig { sink: path.display().to_string(), queue: 64, ..AuditConfig::default() };
        let (log, writer) = start(&config).unwrap();
        let decision = Decision::begin("default", "v1");
        let input = CheckInput::default();
        let record = AuditRecord::new(&decision, &input, false, SystemTime::now());
        // Each record wakes the parked writer and is on disk within the flush
        // period; a tick that finds nothing parks the writer again.
        for n in 1..=3 {
            log.write_now(&record);
            wait_for(&path, n);
            std::thread::sleep(TICK * 3);
        }
        // The rest is written at the end, wherever the writer was.
        for _ in 0..40 {
            log.write_now(&record);
        }
        drop(log);
        writer.finish();
        assert_eq!(lines(&path), 3 + 40);
    }
}
