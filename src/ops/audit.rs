//! Audit records: one JSON line per decision, built and written off the request path.
//!
//! A Check only moves its decision and the few request fields a record names into
//! an `AuditEntry` and queues it; a dedicated thread encodes the JSON and does the
//! disk I/O, so neither costs the request's thread anything. The queue is bounded:
//! in `block` mode a Check waits (asynchronously) for room, so no record is ever
//! lost; in `drop` mode the record is discarded and counted. Records carry
//! fingerprints of credentials, never the credentials.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};
use tokio::sync::{mpsc, Notify};

use crate::config::{AuditConfig, WhenFull};
use crate::ops::json_line::{push_digits, Object};
use crate::ops::metrics::{Sample, StateSource};
use crate::pipeline::decision::{Decision, Outcome};
use crate::pipeline::input::CheckInput;

/// One decided Check, as queued for its record: the decision itself and the
/// request's fields the record names, moved (not copied) out of the Check's input.
#[derive(Debug)]
pub struct AuditEntry {
    decision: Decision,
    time: SystemTime,
    method: String,
    host: String,
    /// Raw `:path`, with the query string: cut when the record is encoded, unless
    /// `include_query`.
    path: String,
    request_id: String,
    source_ip: Option<IpAddr>,
    source_port: Option<u16>,
    source_principal: String,
}

impl AuditEntry {
    /// `decision` about `input`, decided at `time`. Takes the strings the record
    /// needs out of `input`; what is left of it (the headers) is dropped here.
    pub fn new(decision: Decision, input: CheckInput, time: SystemTime) -> AuditEntry {
        let CheckInput { source, http, .. } = input;
        let (method, host, path, request_id) = match http {
            Some(mut http) => {
                let request_id = http
                    .headers
                    .iter_mut()
                    .find(|(k, _)| k == "x-request-id")
                    .map(|(_, v)| std::mem::take(v))
                    .unwrap_or_default();
                (http.method, http.host, http.path, request_id)
            }
            None => Default::default(),
        };
        AuditEntry {
            decision,
            time,
            method,
            host,
            path,
            request_id,
            source_ip: source.ip,
            source_port: source.port,
            source_principal: source.principal,
        }
    }

    /// The record this entry is written as.
    pub fn record(&self, include_query: bool) -> AuditRecord<'_> {
        let decision = &self.decision;
        let (decision_label, reason, detail, status) = match &decision.outcome {
            Outcome::Allow => ("allow", "allow", String::new(), 200),
            Outcome::Deny(reason) => ("deny", reason.code(), reason.to_string(), reason.http_status()),
        };
        let path =
            if include_query { self.path.as_str() } else { self.path.split(['?', '#']).next().unwrap_or_default() };
        AuditRecord {
            time: Rfc3339(self.time),
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
                method: &self.method,
                host: &self.host,
                path,
                resource_path: decision.resource_path.as_deref(),
                request_id: &self.request_id,
                source: self.source_ip.map(|ip| Source { ip, port: self.source_port }),
                source_principal: &self.source_principal,
            },
            cache: decision.cache.label(),
            shadow: decision.shadow.as_ref(),
            latency_us: u64::try_from(decision.elapsed.as_micros()).unwrap_or(u64::MAX),
        }
    }
}

/// One decision, as written.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    pub time: Rfc3339,
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
    /// `ip:port` (`[ip]:port` for IPv6), or the bare ip without a port.
    pub source: Option<Source>,
    /// The principal Envoy reported, also when no identity could be established.
    pub source_principal: &'a str,
}

/// The caller's address, written as a string straight into the record.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    ip: IpAddr,
    port: Option<u16>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => SocketAddr::new(self.ip, port).fmt(f),
            None => self.ip.fmt(f),
        }
    }
}

impl Serialize for Source {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A time in RFC 3339, UTC, to the microsecond: `2026-12-02T19:37:41.123456Z`.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339(pub SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = time::OffsetDateTime::from(self.0);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        )
    }
}

impl Rfc3339 {
    /// The same text as `Display`, written without the formatting machinery: every
    /// audit record starts with one.
    fn write(self, out: &mut Vec<u8>) {
        let t = time::OffsetDateTime::from(self.0);
        // A year past 9999 would need more digits than RFC 3339 has.
        push_digits(out, u32::try_from(t.year()).unwrap_or(0).min(9999), 4);
        for (separator, value, width) in [
            (b'-', u32::from(u8::from(t.month())), 2),
            (b'-', u32::from(t.day()), 2),
            (b'T', u32::from(t.hour()), 2),
            (b':', u32::from(t.minute()), 2),
            (b':', u32::from(t.second()), 2),
            (b'.', t.microsecond(), 6),
        ] {
            out.push(separator);
            push_digits(out, value, width);
        }
        out.push(b'Z');
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl AuditRecord<'_> {
    /// The record as written: one line of JSON and its newline, appended to `line`.
    /// Byte for byte what serde_json writes for it (the derive above is the
    /// reference a test compares with), without serde_json's cost per field.
    pub fn encode_into(&self, line: &mut Vec<u8>) {
        let mut o = Object::begin(line);
        o.raw_str("time", |out| self.time.write(out))
            .str("decision_id", self.decision_id)
            .str("decision", self.decision)
            .str("reason", self.reason)
            .str("detail", &self.detail)
            .int("status", self.status)
            .strs("policies", self.policies)
            .strs("errors", self.errors)
            .str("policy_set", self.policy_set)
            .str("policy_version", self.policy_version)
            .object("peer", self.peer.as_ref(), |o, peer| {
                o.str("spiffe_id", peer.spiffe_id)
                    .opt_str("certificate_serial", peer.certificate_serial)
                    .opt_str("certificate_fingerprint", peer.certificate_fingerprint)
                    .opt_int("certificate_not_after", peer.certificate_not_after);
            })
            .object("token", self.token.as_ref(), |o, token| {
                o.str("iss", token.iss)
                    .str("sub", token.sub)
                    .opt_str("jti", token.jti)
                    .int("exp", token.exp)
                    .str("fingerprint", token.fingerprint);
            })
            .object("request", Some(&self.request), |o, request| {
                o.str("method", request.method)
                    .str("host", request.host)
                    .str("path", request.path)
                    .opt_str("resource_path", request.resource_path)
                    .str("request_id", request.request_id);
                match request.source {
                    Some(source) => o.display("source", source),
                    None => o.null("source"),
                };
                o.str("source_principal", request.source_principal);
            })
            .str("cache", self.cache)
            .object("shadow", self.shadow, |o, shadow| {
                o.str("version", &shadow.version)
                    .str("decision", shadow.decision)
                    .strs("policies", &shadow.policies)
                    .strs("errors", &shadow.errors)
                    .bool("agrees", shadow.agrees);
            })
            .int("latency_us", self.latency_us);
        o.end();
        line.push(b'\n');
    }
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

/// Room for a typical record, so the writer's one line buffer seldom grows: about
/// 600 bytes without a token, 850 with one; longer paths and deny details grow it.
const RECORD_CAPACITY: usize = 1024;

/// The handle Checks write through. Cloned into the gRPC service; the writer
/// thread ends once every handle is gone and the queue is drained.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditEntry>,
    /// Wakes the writer before its next tick once the queue is half full.
    pressure: Arc<Notify>,
    /// Room left in the queue at which `pressure` is signalled.
    pressure_at: usize,
    when_full: WhenFull,
    counters: Arc<AuditStats>,
}

impl AuditLog {
    /// Queues one record now, or (in `block` mode, when the queue is full) returns
    /// the wait for room, which the caller awaits. Never waits on disk. The wait
    /// is boxed because it is rare: an unboxed one would carry the record and the
    /// semaphore's waiter in every Check's future.
    #[must_use = "in `block` mode a full queue's record is queued only by awaiting the wait"]
    pub fn write(&self, entry: AuditEntry) -> Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> {
        match self.when_full {
            WhenFull::Block => match self.tx.try_send(entry) {
                Ok(()) => self.queued(),
                Err(mpsc::error::TrySendError::Full(entry)) => {
                    return Some(Box::pin(async move {
                        // Fails only once the writer is gone, at the very end of a shutdown.
                        if self.tx.send(entry).await.is_ok() {
                            self.queued();
                        }
                    }));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            },
            WhenFull::Drop => self.write_now(entry),
        }
        None
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
    pub fn write_now(&self, entry: AuditEntry) {
        if self.try_queue(entry) {
            self.queued();
        }
    }

    fn try_queue(&self, entry: AuditEntry) -> bool {
        match self.tx.try_send(entry) {
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
    let (tx, rx) = mpsc::channel::<AuditEntry>(config.queue);
    let counters = Arc::new(AuditStats::default());
    let reopen = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(AuditError::Thread)?;
    let pressure = Arc::new(Notify::new());
    let config_include_query = config.include_query;
    let thread = {
        let counters = Arc::clone(&counters);
        let reopen = Arc::clone(&reopen);
        let pressure = Arc::clone(&pressure);
        std::thread::Builder::new()
            .name("cedargate-audit".to_owned())
            .spawn(move || {
                let encoder = Encoder::new(config_include_query);
                runtime.block_on(write_records(rx, sink, encoder, &counters, &reopen, &pressure));
            })
            .map_err(AuditError::Thread)?
    };
    let log = AuditLog { tx, pressure, pressure_at: config.queue / 2, when_full: config.when_full, counters };
    Ok((log, AuditWriter { thread: Some(thread), reopen }))
}

/// Encodes entries into one reused buffer: a record costs no allocation of its own,
/// and a line reaches the sink whole or not at all.
struct Encoder {
    line: Vec<u8>,
    include_query: bool,
}

impl Encoder {
    fn new(include_query: bool) -> Encoder {
        Encoder { line: Vec::with_capacity(RECORD_CAPACITY), include_query }
    }

    fn line(&mut self, entry: &AuditEntry) -> &[u8] {
        self.line.clear();
        entry.record(self.include_query).encode_into(&mut self.line);
        &self.line
    }
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
    mut rx: mpsc::Receiver<AuditEntry>,
    mut sink: Sink,
    mut encoder: Encoder,
    counters: &AuditStats,
    reopen: &AtomicBool,
    pressure: &Notify,
) {
    // Checked before every record, so a rotation takes effect at once even in
    // the middle of a burst.
    let mut write = |sink: &mut Sink, entry: AuditEntry| {
        if reopen.swap(false, Ordering::AcqRel) {
            sink.reopen();
        }
        counters.queued.fetch_sub(1, Ordering::Relaxed);
        if sink.writer().write_all(encoder.line(&entry)).is_ok() {
            counters.written.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.failed.fetch_add(1, Ordering::Relaxed);
        }
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
                    Ok(entry) => {
                        write(&mut sink, entry);
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
                help: "Audit records that could not be written",
                labels: vec![],
                value: c.failed.load(Ordering::Relaxed),
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::decision::ShadowVerdict;

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
        let entry = || AuditEntry::new(Decision::begin("default", "v1"), CheckInput::default(), SystemTime::now());
        // Each record wakes the parked writer and is on disk within the flush
        // period; a tick that finds nothing parks the writer again.
        for n in 1..=3 {
            log.write_now(entry());
            wait_for(&path, n);
            std::thread::sleep(TICK * 3);
        }
        // The rest is written at the end, wherever the writer was.
        for _ in 0..40 {
            log.write_now(entry());
        }
        drop(log);
        writer.finish();
        assert_eq!(lines(&path), 3 + 40);
    }

    /// Random strings that need every kind of escaping, and none.
    struct Strings(u64);

    impl Strings {
        fn next(&mut self) -> u64 {
            // xorshift64: deterministic, so a failure reproduces.
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn string(&mut self) -> String {
            const CHARS: &[char] = &[
                'a', 'Z', '0', ' ', '/', '"', '\\', '\n', '\r', '\t', '\u{0}', '\u{8}', '\u{c}', '\u{1f}', '\u{7f}',
                'é', '😀', '\u{2028}',
            ];
            let len = self.next() % 12;
            (0..len).map(|_| CHARS[(self.next() % CHARS.len() as u64) as usize]).collect()
        }

        fn strings(&mut self) -> Vec<String> {
            (0..self.next() % 3).map(|_| self.string()).collect()
        }

        fn maybe(&mut self) -> bool {
            self.next().is_multiple_of(2)
        }
    }

    #[test]
    fn a_record_is_written_byte_for_byte_as_serde_json_writes_it() {
        let mut g = Strings(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let text: Vec<String> = (0..16).map(|_| g.string()).collect();
            let (policies, errors) = (g.strings(), g.strings());
            let shadow = ShadowVerdict {
                version: g.string(),
                decision: "policy_denied",
                policies: g.strings(),
                errors: g.strings(),
                agrees: g.maybe(),
            };
            let ip: IpAddr = if g.maybe() { "10.0.3.7".parse().unwrap() } else { "2001:db8::7".parse().unwrap() };
            let (with_peer, with_token, with_shadow, with_source) = (g.maybe(), g.maybe(), g.maybe(), g.maybe());
            let record = AuditRecord {
                time: Rfc3339(SystemTime::UNIX_EPOCH + Duration::from_micros(g.next() % 4_102_444_800_000_000)),
                decision_id: &text[0],
                decision: "deny",
                reason: "token_invalid",
                detail: text[1].clone(),
                status: 401,
                policies: &policies,
                errors: &errors,
                policy_set: &text[2],
                policy_version: &text[3],
                peer: with_peer.then(|| PeerRecord {
                    spiffe_id: &text[4],
                    certificate_serial: g.maybe().then_some(text[5].as_str()),
                    certificate_fingerprint: g.maybe().then_some(text[6].as_str()),
                    certificate_not_after: g.maybe().then_some(-(g.next() as i64 >> 1)),
                }),
                token: with_token.then(|| TokenRecord {
                    iss: &text[7],
                    sub: &text[8],
                    jti: g.maybe().then_some(text[9].as_str()),
                    exp: g.next() as i64,
                    fingerprint: &text[10],
                }),
                request: RequestRecord {
                    method: &text[11],
                    host: &text[12],
                    path: &text[13],
                    resource_path: g.maybe().then_some(text[14].as_str()),
                    request_id: &text[15],
                    source: with_source.then(|| Source { ip, port: g.maybe().then_some(40000) }),
                    source_principal: &text[0],
                },
                cache: "hit",
                shadow: with_shadow.then_some(&shadow),
                latency_us: g.next(),
            };
            let mut written = Vec::new();
            record.encode_into(&mut written);
            let mut reference = serde_json::to_vec(&record).unwrap();
            reference.push(b'\n');
            assert_eq!(String::from_utf8(written).unwrap(), String::from_utf8(reference).unwrap());
        }
    }

    #[test]
    fn a_record_names_the_request_as_the_log_did() {
        let mut input = CheckInput::default();
        input.source.ip = Some("2001:db8::7".parse().unwrap());
        input.source.port = Some(443);
        input.http = Some(crate::pipeline::input::HttpInput {
            method: "GET".to_owned(),
            path: "/api/orders?token=secret#frag".to_owned(),
            headers: vec![("x-request-id".to_owned(), "req-1".to_owned())],
            ..Default::default()
        });
        // 2026-12-02T19:37:41.000042Z: the subsecond digits keep their leading zeros.
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_240_261_000_042);
        let entry = AuditEntry::new(Decision::begin("default", "v1"), input, at);
        let json = |include_query| {
            let mut line = Vec::new();
            entry.record(include_query).encode_into(&mut line);
            assert_eq!(line.last(), Some(&b'\n'));
            serde_json::from_slice::<serde_json::Value>(&line).unwrap()
        };
        let record = json(false);
        assert_eq!(record["time"], "2026-12-02T19:37:41.000042Z");
        assert_eq!(record["request"]["source"], "[2001:db8::7]:443");
        assert_eq!(record["request"]["path"], "/api/orders");
        assert_eq!(record["request"]["request_id"], "req-1");
        assert_eq!(json(true)["request"]["path"], "/api/orders?token=secret#frag");
    }
}
