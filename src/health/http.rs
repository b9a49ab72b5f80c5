//! The HTTP probe's client: one `GET` over HTTP/1.1 on a TCP connection (TLS for `https://`: rustls with
//! the system's CAs, or `health.ca_file`'s, an optional client certificate), kept for the same service's
//! next check when the target keeps it alive, closed when the target closes it (most do).
//!
//! Written for the probe's one job rather than borrowed from a general client: a check is one request
//! written in one `write`, a response head, and a body read only as far as its framing says (at most
//! [`READ_LIMIT`] bytes, which a failure's message quotes). Nothing is spawned and no pool is shared, so a
//! check costs its connection's syscalls and little else (BENCHMARKS.md, "Side by side with the peers").

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::Uri;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::socket::{ProbeSocket, Reactor};
use crate::config::HttpProbe;

/// Most bytes of a response body read by a probe (and of a response head).
pub const READ_LIMIT: usize = 64 * 1024;
/// A kept connection unused for this long is not reused (servers drop idle ones after 5 to 75 s).
pub(super) const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Headers parsed per response head.
const MAX_HEADERS: usize = 64;

/// How an `https` target's certificate is trusted, and the client's own certificate, if any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Trust {
    ca_file: Option<PathBuf>,
    skip_verify: bool,
    client_identity: Option<(PathBuf, PathBuf)>,
}

/// What a probe sends to and asks of, parsed from the probe's URL once per service and probe (the prober
/// keeps it).
#[derive(Debug)]
pub struct Target {
    /// The host named by the URL.
    pub host: String,
    /// The port (80, or 443 for `https`, when the URL names none).
    pub port: u16,
    /// `host:port` to connect to.
    address: String,
    /// The same, when the host is an IP address (no name to resolve).
    literal: Option<std::net::SocketAddr>,
    /// For `https`: the name the server's certificate must carry, and how it is trusted.
    tls: Option<(ServerName<'static>, Trust)>,
    /// The request without a `traceparent` (what an untraced check sends), made once; a traced check's
    /// adds that line before the final empty one.
    plain: Vec<u8>,
}

impl Target {
    /// The target of `probe`'s `http://` or `https://` URL.
    pub fn parse(probe: &HttpProbe) -> Result<Self, String> {
        let url = probe.url.as_str();
        let uri: Uri = url.parse().map_err(|error| format!("bad URL {url}: {error}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("bad URL {url}: not an http:// or https:// URL")),
        };
        let authority = uri.authority().ok_or_else(|| format!("bad URL {url}: no host"))?;
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let address = if host.starts_with('[') {
            format!("{host}:{port}")
        } else if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let tls = if tls {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let name =
                ServerName::try_from(bare.to_owned()).map_err(|error| format!("bad URL {url}: {error}"))?;
            let trust = Trust {
                ca_file: probe.ca_file.clone(),
                skip_verify: probe.skip_verify,
                client_identity: probe.client_identity.clone(),
            };
            Some((name, trust))
        } else {
            None
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let host_header = match authority.as_str().rsplit_once('@') {
            Some((_, host)) => host,
            None => authority.as_str(),
        };
        let plain = format!(
            "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: fog-orchestrator/{}\r\nAccept: */*\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        Ok(Self {
            host: host.to_owned(),
            port,
            literal: address.parse().ok(),
            address,
            tls,
            plain: plain.into_bytes(),
        })
    }

    /// The address to connect to when the target is plain `http://` to an IP address: one the
    /// steady-check engine can check without resolving a name or a TLS handshake.
    pub(super) fn plain_address(&self) -> Option<std::net::SocketAddr> {
        self.literal.filter(|_| self.tls.is_none())
    }

    /// The request's bytes, with a `traceparent` header when one is given.
    pub fn request(&self, traceparent: Option<&str>) -> std::borrow::Cow<'_, [u8]> {
        let Some(traceparent) = traceparent else {
            return std::borrow::Cow::Borrowed(&self.plain);
        };
        let head = &self.plain[..self.plain.len() - 2];
        let mut request = Vec::with_capacity(self.plain.len() + 72);
        request.extend_from_slice(head);
        request.extend_from_slice(b"traceparent: ");
        request.extend_from_slice(traceparent.as_bytes());
        request.extend_from_slice(b"\r\n\r\n");
        std::borrow::Cow::Owned(request)
    }
}

/// A response, as far as a probe needs it.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, or its first [`READ_LIMIT`] bytes.
    pub body: Vec<u8>,
}

/// Why a request got no response.
#[derive(Debug)]
pub enum Failure {
    /// No connection could be made.
    Connect(io::Error),
    /// The TLS handshake failed (an untrusted or mismatched certificate, no common protocol), or the
    /// trust settings could not be loaded.
    Tls(String),
    /// The connection failed, or closed, before the response was whole.
    Io(io::Error),
    /// The bytes that came back are not an HTTP/1.x response.
    Malformed(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(error) => write!(f, "cannot connect: {error}"),
            Failure::Tls(error) => write!(f, "TLS: {error}"),
            Failure::Io(error) => write!(f, "{error}"),
            Failure::Malformed(what) => write!(f, "bad response: {what}"),
        }
    }
}

/// A connection to a target: plain TCP (on a kept socket for an IP address), or TLS over it.
#[derive(Debug)]
enum Connection {
    Probe(ProbeSocket),
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Probe(socket) => Pin::new(socket).poll_read(cx, buf),
            Connection::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Probe(socket) => Pin::new(socket).poll_write(cx, buf),
            Connection::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Probe(socket) => Pin::new(socket).poll_flush(cx),
            Connection::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Probe(socket) => Pin::new(socket).poll_shutdown(cx),
            Connection::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The HTTP client of every HTTP probe, with at most one kept-alive connection per service, or its
/// socket, dissolved, for the next connection.
#[derive(Debug, Default)]
pub struct Client {
    kept: Mutex<HashMap<String, Kept>>,
    /// TLS client settings, made once per way of trusting (they load files and the system's roots).
    tls: Mutex<HashMap<Trust, Arc<rustls::ClientConfig>>>,
    /// What watches the kept sockets, started at the first check of an IP address.
    reactor: Mutex<Option<Arc<Reactor>>>,
}

/// What a service's next check can use: a connection the target keeps alive, or a socket to connect again.
#[derive(Debug, Default)]
struct Kept {
    idle: Option<Idle>,
    spare: Option<ProbeSocket>,
}

#[derive(Debug)]
struct Idle {
    address: String,
    stream: Connection,
    since: Instant,
}

impl Connection {
    fn is_tls(&self) -> bool {
        matches!(self, Connection::Tls(_))
    }

    /// The connection's socket, dissolved for another connection, if it is a kept socket (one that cannot
    /// be dissolved is closed, with the ordinary FIN).
    fn into_spare(self) -> Option<ProbeSocket> {
        match self {
            Connection::Probe(socket) => socket.dissolve().is_ok().then_some(socket),
            _ => None,
        }
    }
}

impl Client {
    /// `GET` of `target` for `service`: on the service's kept connection if it has one (once more on a
    /// new connection if the kept one turns out closed), else on a new connection.
    pub async fn get(
        &self,
        service: &str,
        target: &Target,
        traceparent: Option<&str>,
    ) -> Result<Response, Failure> {
        let request = target.request(traceparent);
        let (idle, mut spare) = self.take(service, target);
        if let Some(mut stream) = idle {
            match exchange(&mut stream, &request).await {
                Ok((response, reusable)) => {
                    self.keep_or_reset(service, &target.address, stream, reusable);
                    return Ok(response);
                }
                // The server closed the kept connection before (or as) this request went out: an ordinary
                // race with its idle timeout, not a failed check. Once more on a new connection.
                Err(Exchange::Unanswered(_)) => spare = spare.or_else(|| stream.into_spare()),
                Err(Exchange::Failed(failure)) => return Err(failure),
            }
        }
        let (mut stream, sent) = self.connect_sending(target, &request, spare).await?;
        match exchange(&mut stream, &request[sent..]).await {
            Ok((response, reusable)) => {
                self.keep_or_reset(service, &target.address, stream, reusable);
                Ok(response)
            }
            Err(Exchange::Unanswered(error)) => Err(Failure::Io(error)),
            Err(Exchange::Failed(failure)) => Err(failure),
        }
    }

    /// A new connection to `target`, and how much of `request` already went out on it. A plain one to an IP
    /// address is made on the service's kept socket (`spare`; else a new one) and sent the request
    /// straight after `connect` (on loopback and other fast paths the handshake is over by then), which
    /// spares the check a wake-up for the connection's readiness.
    async fn connect_sending(
        &self,
        target: &Target,
        request: &[u8],
        spare: Option<ProbeSocket>,
    ) -> Result<(Connection, usize), Failure> {
        if let Some(address) = target.literal
            && target.tls.is_none()
            && let Some(mut socket) = self.probe_socket(spare, address)
        {
            // A socket whose connection failed is not kept: it is closed here.
            let sent = socket
                .connect_and_send(address, request)
                .await
                .map_err(Failure::Connect)?;
            return Ok((Connection::Probe(socket), sent));
        }
        Ok((self.connect(target).await?, 0))
    }

    /// `spare` if it can connect to `address`, else a new socket; none if no reactor can watch one (then
    /// the check connects through the runtime, as to a host name).
    fn probe_socket(&self, spare: Option<ProbeSocket>, address: std::net::SocketAddr) -> Option<ProbeSocket> {
        if let Some(socket) = spare.filter(|socket| socket.fits(address)) {
            return Some(socket);
        }
        let reactor = {
            let mut reactor = self
                .reactor
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match reactor.as_ref() {
                Some(running) if running.is_alive() => running.clone(),
                _ => match Reactor::start() {
                    Ok(started) => reactor.insert(started).clone(),
                    Err(error) => {
                        tracing::debug!(%error, "no reactor for probe sockets: connecting through the runtime");
                        return None;
                    }
                },
            }
        };
        ProbeSocket::new(&reactor, address).ok()
    }

    async fn connect(&self, target: &Target) -> Result<Connection, Failure> {
        let stream = TcpStream::connect(&target.address)
            .await
            .map_err(Failure::Connect)?;
        let Some((name, trust)) = &target.tls else {
            return Ok(Connection::Plain(stream));
        };
        let config = self.tls_config(trust)?;
        let stream = TlsConnector::from(config)
            .connect(name.clone(), stream)
            .await
            .map_err(|error| Failure::Tls(error.to_string()))?;
        Ok(Connection::Tls(Box::new(stream)))
    }

    fn tls_config(&self, trust: &Trust) -> Result<Arc<rustls::ClientConfig>, Failure> {
        let mut configs = self.tls.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(config) = configs.get(trust) {
            return Ok(config.clone());
        }
        // Files that cannot be read fail this check, and are read again at the next one.
        let config = Arc::new(client_config(trust).map_err(Failure::Tls)?);
        configs.insert(trust.clone(), config.clone());
        Ok(config)
    }

    /// The service's kept connection, if it still goes where `target` does, the same way (plain or TLS),
    /// and its spare socket. A kept connection that may not be used any more is dissolved into the spare.
    fn take(&self, service: &str, target: &Target) -> (Option<Connection>, Option<ProbeSocket>) {
        let mut kept = self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(kept) = kept.get_mut(service) else {
            return (None, None);
        };
        let spare = kept.spare.take();
        let Some(idle) = kept.idle.take() else {
            return (None, spare);
        };
        let same = idle.address == target.address && idle.stream.is_tls() == target.tls.is_some();
        if same && idle.since.elapsed() < IDLE_LIMIT {
            return (Some(idle.stream), spare);
        }
        (None, spare.or_else(|| idle.stream.into_spare()))
    }

    /// After a whole response: keeps the connection for the next check if it may carry another, else ends
    /// it. A server that does not keep connections has already closed its side (it said `Connection:
    /// close`, or ended the body by closing), and a plain connection is ended with a reset instead of a
    /// FIN, as kubelet and HAProxy close their probes' connections: the server's socket goes at once
    /// instead of waiting a minute in TIME_WAIT for every check, and neither kernel exchanges the closing
    /// handshake. A kept socket is reset by dissolving it, and stays for the next check.
    fn keep_or_reset(&self, service: &str, address: &str, stream: Connection, reusable: bool) {
        if reusable {
            let idle = Idle {
                address: address.to_owned(),
                stream,
                since: Instant::now(),
            };
            self.keep(service, |kept| kept.idle = Some(idle));
            return;
        }
        if let Connection::Plain(stream) = &stream {
            // Should the option not take, the connection closes the ordinary way.
            let _ = stream.set_zero_linger();
        } else if let Some(socket) = stream.into_spare() {
            self.keep(service, |kept| kept.spare = Some(socket));
        }
    }

    fn keep(&self, service: &str, put: impl FnOnce(&mut Kept)) {
        let mut kept = self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match kept.get_mut(service) {
            Some(slot) => put(slot),
            None => put(kept.entry(service.to_owned()).or_default()),
        }
    }

    /// Closes `service`'s kept connection and socket, if any (the service is gone or stopped).
    pub fn forget(&self, service: &str) {
        let mut kept = self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.remove(service);
    }
}

/// The crypto of every TLS connection: rustls with *ring*.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The system's CA certificates, loaded once (a certificate the platform cannot parse is skipped).
fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system CA certificates found: https probes trust nothing without health.ca_file"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

/// TLS client settings trusting `ca_file` (else the system's CAs), with an optional client certificate
/// and key: what etcd's client connections use.
pub(crate) fn tls_client_config(
    ca_file: Option<PathBuf>,
    client_identity: Option<(PathBuf, PathBuf)>,
) -> Result<rustls::ClientConfig, String> {
    client_config(&Trust {
        ca_file,
        skip_verify: false,
        client_identity,
    })
}

/// TLS client settings for `trust`.
fn client_config(trust: &Trust) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?;
    let builder = if trust.skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
    } else {
        let roots = match &trust.ca_file {
            Some(file) => {
                let mut roots = rustls::RootCertStore::empty();
                let certificates = read_certificates(file)?;
                for certificate in certificates {
                    roots
                        .add(certificate)
                        .map_err(|error| format!("{}: {error}", file.display()))?;
                }
                Arc::new(roots)
            }
            None => system_roots(),
        };
        builder.with_root_certificates(roots)
    };
    match &trust.client_identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = read_certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|error| format!("cannot read a private key from {}: {error}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| format!("client certificate {}: {error}", cert.display()))
        }
    }
}

fn read_certificates(file: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(file)
        .and_then(|iterator| iterator.collect::<Result<Vec<_>, _>>())
        .map_err(|error| format!("cannot read certificates from {}: {error}", file.display()))?;
    if certificates.is_empty() {
        return Err(format!("no certificate in {}", file.display()));
    }
    Ok(certificates)
}

/// `health.tls_skip_verify = true`: any certificate is accepted (the handshake's signatures are still
/// checked, so the connection is encrypted, but not authenticated).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How one exchange on one connection went wrong.
enum Exchange {
    /// Nothing came back: the connection failed or closed before the first byte of a response.
    Unanswered(io::Error),
    /// Anything else.
    Failed(Failure),
}

/// Writes `request` (what of it did not go out with the connection) and reads one response; also says
/// whether the connection may carry another.
async fn exchange(stream: &mut Connection, request: &[u8]) -> Result<(Response, bool), Exchange> {
    if !request.is_empty() {
        stream.write_all(request).await.map_err(Exchange::Unanswered)?;
    }
    let mut buffer = Vec::with_capacity(1024);
    loop {
        let closed = match read_some(stream, &mut buffer).await {
            Err(error) if buffer.is_empty() => return Err(Exchange::Unanswered(error)),
            Err(error) => return Err(Exchange::Failed(Failure::Io(error))),
            Ok(0) if buffer.is_empty() => {
                return Err(Exchange::Unanswered(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(read) => read == 0,
        };
        if let Some(whole) = parse_response(&buffer, closed).map_err(Exchange::Failed)? {
            return Ok(whole);
        }
    }
}

/// Most bytes read for one response before it is given up as malformed: its head, a body of up to
/// [`READ_LIMIT`] bytes, and what frames them.
const BUFFER_LIMIT: usize = 3 * READ_LIMIT;

/// One read, appended to `buffer`.
async fn read_some(stream: &mut Connection, buffer: &mut Vec<u8>) -> io::Result<usize> {
    make_room(buffer);
    stream.read_buf(buffer).await
}

/// Room in `buffer` for the next read of a response: at least 512 bytes, growing it by doubling.
pub(super) fn make_room(buffer: &mut Vec<u8>) {
    if buffer.capacity() - buffer.len() < 512 {
        buffer.reserve(buffer.capacity().max(1024));
    }
}

/// The head and framing of a response.
struct Head {
    status: u16,
    length: usize,
    framing: Framing,
    keep_alive: bool,
}

#[derive(Clone, Copy)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// The response at the start of `buffer` (the bytes read so far on a connection; `closed` once the peer
/// closed it), and whether the connection may carry another; none while more bytes are needed (never once
/// the peer closed the connection, nor past [`BUFFER_LIMIT`] bytes: a response cut short or too long is a
/// failure). Interim responses (100 Continue, 103 Early Hints) are skipped; a body is kept up to
/// [`READ_LIMIT`] bytes (a longer one ends the read, and the connection is not reused).
///
/// Both the probes' async client and the steady-check engine read responses with this: it does no I/O.
pub(super) fn parse_response(buffer: &[u8], closed: bool) -> Result<Option<(Response, bool)>, Failure> {
    let cut_short = || {
        if closed {
            Err(Failure::Io(io::ErrorKind::UnexpectedEof.into()))
        } else if buffer.len() > BUFFER_LIMIT {
            Err(Failure::Malformed(format!(
                "no whole response in {BUFFER_LIMIT} bytes"
            )))
        } else {
            Ok(None)
        }
    };
    let mut at = 0;
    let head = loop {
        match parse_head(&buffer[at..])? {
            Some(head) if (100..200).contains(&head.status) => at += head.length,
            Some(head) => break head,
            None if buffer.len() - at > READ_LIMIT => {
                return Err(Failure::Malformed(format!(
                    "a response head over {READ_LIMIT} bytes"
                )));
            }
            None => return cut_short(),
        }
    };
    let body = &buffer[at + head.length..];
    let (body, whole) = match head.framing {
        Framing::Empty => (Vec::new(), true),
        Framing::Length(length) => {
            let wanted = length.min(READ_LIMIT);
            if body.len() < wanted {
                return cut_short();
            }
            (body[..wanted].to_vec(), body.len() == length)
        }
        Framing::Chunked => match decode_chunked(body)? {
            Some(decoded) => decoded,
            None => return cut_short(),
        },
        Framing::UntilClose if closed || body.len() >= READ_LIMIT => {
            (body[..body.len().min(READ_LIMIT)].to_vec(), false)
        }
        Framing::UntilClose => return cut_short(),
    };
    let response = Response {
        status: head.status,
        body,
    };
    Ok(Some((response, whole && head.keep_alive)))
}

/// The response head at the start of `buffer`, once it is all there.
fn parse_head(buffer: &[u8]) -> Result<Option<Head>, Failure> {
    if buffer.is_empty() {
        return Ok(None);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(Failure::Malformed(error.to_string())),
    };
    let status = response.code.unwrap_or_default();
    let mut content_length = None;
    let (mut chunked, mut close, mut keep_alive_token) = (false, false, false);
    for header in response.headers.iter() {
        // Decoded only for the headers that matter here (most of a response's are not).
        let value = || String::from_utf8_lossy(header.value);
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = value();
            let parsed: usize = value
                .trim()
                .parse()
                .map_err(|_| Failure::Malformed(format!("Content-Length {value:?}")))?;
            if content_length.is_some_and(|known| known != parsed) {
                return Err(Failure::Malformed("two different Content-Lengths".to_owned()));
            }
            content_length = Some(parsed);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value()
                .rsplit(',')
                .next()
                .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in value().split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive_token |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(length) = content_length {
        Framing::Length(length)
    } else {
        Framing::UntilClose
    };
    let keep_alive = !close && (response.version == Some(1) || keep_alive_token);
    Ok(Some(Head {
        status,
        length,
        framing,
        keep_alive,
    }))
}

/// A chunked body at the start of `buffer`, decoded up to [`READ_LIMIT`] bytes, and whether it was read
/// whole (to its last chunk and trailers); none while more bytes are needed.
fn decode_chunked(buffer: &[u8]) -> Result<Option<(Vec<u8>, bool)>, Failure> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        // A chunk's size line, its data and CRLF; the last chunk has size 0 and is followed by trailers.
        let (size_length, size) = match httparse::parse_chunk_size(&buffer[at..]) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(Failure::Malformed("bad chunk size".to_owned())),
        };
        at += size_length;
        if size == 0 {
            return Ok(trailers_end(&buffer[at..])?.then_some((body, true)));
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if body.len().saturating_add(size) > READ_LIMIT {
            // Too long to read whole: keep what fits (to quote) and close the connection.
            let room = READ_LIMIT - body.len();
            let available = (buffer.len() - at).min(room);
            body.extend_from_slice(&buffer[at..at + available]);
            return Ok(Some((body, false)));
        }
        if buffer.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buffer[at..at + size]);
        if &buffer[at + size..at + size + 2] != b"\r\n" {
            return Err(Failure::Malformed("a chunk not followed by CRLF".to_owned()));
        }
        at += size + 2;
    }
}

/// Whether the trailer section at the start of `buffer` is there up to its empty line.
fn trailers_end(buffer: &[u8]) -> Result<bool, Failure> {
    let mut at = 0;
    loop {
        match buffer[at..].windows(2).position(|pair| pair == b"\r\n") {
            Some(0) => return Ok(true),
            Some(line) => at += line + 2,
            None if buffer.len() - at > READ_LIMIT => {
                return Err(Failure::Malformed("trailers over the read limit".to_owned()));
            }
            None => return Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    /// The key of the socket `service` keeps for its next connection.
    fn spare_key(client: &Client, service: &str) -> Option<u64> {
        let kept = client.kept.lock().unwrap();
        kept.get(service)?.spare.as_ref().map(ProbeSocket::key)
    }

    #[test]
    fn the_request_carries_a_traceparent_line_only_when_given_one() {
        let target = Target::parse(&HttpProbe::new("http://10.0.0.1:8080/ready?full=1")).unwrap();
        let head = format!(
            "GET /ready?full=1 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nUser-Agent: fog-orchestrator/{}\r\nAccept: */*\r\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(&*target.request(None), format!("{head}\r\n").as_bytes());
        assert_eq!(
            &*target.request(Some("00-abc-def-01")),
            format!("{head}traceparent: 00-abc-def-01\r\n\r\n").as_bytes()
        );
    }

    /// The status, body and reusability of what `parse_response` made of `bytes`.
    fn parsed(bytes: &[u8], closed: bool) -> Option<(u16, String, bool)> {
        let (response, reusable) = parse_response(bytes, closed).unwrap()?;
        Some((
            response.status,
            String::from_utf8(response.body).unwrap(),
            reusable,
        ))
    }

    #[test]
    fn a_response_is_whole_once_its_framing_says_so() {
        let length = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(parsed(length, false), Some((200, "ok".to_owned(), true)));
        assert_eq!(parsed(&length[..length.len() - 1], false), None, "one byte short");
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n1\r\n!\r\n0\r\n\r\n";
        assert_eq!(parsed(chunked, false), Some((200, "ok!".to_owned(), true)));
        assert_eq!(
            parsed(&chunked[..chunked.len() - 2], false),
            None,
            "trailers not ended"
        );
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parsed(interim, false), Some((204, String::new(), true)));
        let until_close = b"HTTP/1.0 200 OK\r\n\r\nhello";
        assert_eq!(
            parsed(until_close, false),
            None,
            "the body ends where the connection does"
        );
        assert_eq!(parsed(until_close, true), Some((200, "hello".to_owned(), false)));
        let closing = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(parsed(closing, false), Some((200, "ok".to_owned(), false)));
        let trailing = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokAND MORE";
        assert_eq!(
            parsed(trailing, false),
            Some((200, "ok".to_owned(), false)),
            "bytes past the body: the connection is not reused"
        );
    }

    #[test]
    fn a_response_cut_short_or_malformed_is_a_failure() {
        let cut = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nok";
        assert!(
            matches!(parse_response(cut, true), Err(Failure::Io(error)) if error.kind() == io::ErrorKind::UnexpectedEof)
        );
        assert!(matches!(
            parse_response(b"HTTP/1.1 200", true),
            Err(Failure::Io(_))
        ));
        assert!(matches!(
            parse_response(b"SSH-2.0-OpenSSH\r\n", false),
            Err(Failure::Malformed(_))
        ));
        let bad_chunk = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n";
        assert!(matches!(
            parse_response(bad_chunk, false),
            Err(Failure::Malformed(_))
        ));
        // A chunk extension that never ends: given up once more than a response's worth has come.
        let mut endless = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;x".to_vec();
        assert!(matches!(parse_response(&endless, false), Ok(None)));
        endless.resize(BUFFER_LIMIT + 1, b'x');
        assert!(matches!(
            parse_response(&endless, false),
            Err(Failure::Malformed(message)) if message == format!("no whole response in {BUFFER_LIMIT} bytes")
        ));
    }

    #[tokio::test]
    async fn a_target_that_closes_each_connection_is_checked_on_one_socket_connected_again() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let mut ports = Vec::new();
            for _ in 0..3 {
                let (mut stream, peer) = listener.accept().unwrap();
                let mut request = [0; 1024];
                let _ = stream.read(&mut request).unwrap();
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
                    .unwrap();
                ports.push(peer.port());
            }
            ports
        });
        let target = Target::parse(&HttpProbe::new(url)).unwrap();
        let client = Client::default();
        let mut keys = Vec::new();
        for _ in 0..3 {
            let response = client.get("web", &target, None).await.unwrap();
            assert_eq!((response.status, response.body.as_slice()), (200, &b"ok"[..]));
            keys.push(spare_key(&client, "web").expect("the socket is kept, dissolved"));
        }
        let ports = server.join().unwrap();
        assert!(keys.iter().all(|key| *key == keys[0]), "one socket: {keys:?}");
        assert!(
            ports[0] != ports[1] && ports[1] != ports[2],
            "a new connection each time: {ports:?}"
        );
        client.forget("web");
        assert_eq!(spare_key(&client, "web"), None);
    }
}
