//! The HTTP probe's client: one `GET` over HTTP/1.1 on a plain TCP connection, kept for the same
//! service's next check when the target keeps it alive, closed when the target closes it (most do).
//!
//! Written for the probe's one job rather than borrowed from a general client: a check is one request
//! written in one `write`, a response head, and a body read only as far as its framing says (at most
//! [`READ_LIMIT`] bytes, which a failure's message quotes). Nothing is spawned and no pool is shared, so a
//! check costs its connection's syscalls and little else (BENCHMARKS.md, "Health checks").

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes of a response body read by a probe (and of a response head).
pub const READ_LIMIT: usize = 64 * 1024;
/// A kept connection unused for this long is not reused (servers drop idle ones after 5 to 75 s).
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Headers parsed per response head.
const MAX_HEADERS: usize = 64;

/// What a probe sends to and asks of: parsed once per check from the probe's URL.
#[derive(Debug)]
pub struct Target {
    /// The host named by the URL.
    pub host: String,
    /// The port (80 when the URL names none).
    pub port: u16,
    /// `host:port` to connect to.
    address: String,
    /// The request, whole, but for its `traceparent` line.
    head: String,
}

impl Target {
    /// Parses an `http://` URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|error| format!("bad URL {url}: {error}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("bad URL {url}: not an http:// URL"));
        }
        let authority = uri.authority().ok_or_else(|| format!("bad URL {url}: no host"))?;
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(80);
        let address = if host.starts_with('[') {
            format!("{host}:{port}")
        } else if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let host_header = match authority.as_str().rsplit_once('@') {
            Some((_, host)) => host,
            None => authority.as_str(),
        };
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: fog-orchestrator/{}\r\nAccept: */*\r\n",
            env!("CARGO_PKG_VERSION")
        );
        Ok(Self {
            host: host.to_owned(),
            port,
            address,
            head,
        })
    }

    /// The request's bytes, with a `traceparent` header when one is given.
    pub fn request(&self, traceparent: Option<&str>) -> Vec<u8> {
        let mut request = String::with_capacity(self.head.len() + 72);
        request.push_str(&self.head);
        if let Some(traceparent) = traceparent {
            request.push_str("traceparent: ");
            request.push_str(traceparent);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        request.into_bytes()
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
    /// The connection failed, or closed, before the response was whole.
    Io(io::Error),
    /// The bytes that came back are not an HTTP/1.x response.
    Malformed(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(error) => write!(f, "cannot connect: {error}"),
            Failure::Io(error) => write!(f, "{error}"),
            Failure::Malformed(what) => write!(f, "bad response: {what}"),
        }
    }
}

/// The HTTP client of every HTTP probe, with at most one kept-alive connection per service.
#[derive(Debug, Default)]
pub struct Client {
    idle: Mutex<HashMap<String, Option<Idle>>>,
}

#[derive(Debug)]
struct Idle {
    address: String,
    stream: TcpStream,
    since: Instant,
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
        if let Some(mut stream) = self.take(service, &target.address) {
            match exchange(&mut stream, &request).await {
                Ok((response, reusable)) => {
                    if reusable {
                        self.keep(service, &target.address, stream);
                    }
                    return Ok(response);
                }
                // The server closed the kept connection before (or as) this request went out: an ordinary
                // race with its idle timeout, not a failed check. Once more on a new connection.
                Err(Exchange::Unanswered(_)) => {}
                Err(Exchange::Failed(failure)) => return Err(failure),
            }
        }
        let mut stream = TcpStream::connect(&target.address)
            .await
            .map_err(Failure::Connect)?;
        match exchange(&mut stream, &request).await {
            Ok((response, reusable)) => {
                if reusable {
                    self.keep(service, &target.address, stream);
                }
                Ok(response)
            }
            Err(Exchange::Unanswered(error)) => Err(Failure::Io(error)),
            Err(Exchange::Failed(failure)) => Err(failure),
        }
    }

    fn take(&self, service: &str, address: &str) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let kept = idle.get_mut(service)?.take()?;
        (kept.address == address && kept.since.elapsed() < IDLE_LIMIT).then_some(kept.stream)
    }

    fn keep(&self, service: &str, address: &str, stream: TcpStream) {
        let kept = Idle {
            address: address.to_owned(),
            stream,
            since: Instant::now(),
        };
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match idle.get_mut(service) {
            Some(slot) => *slot = Some(kept),
            None => {
                idle.insert(service.to_owned(), Some(kept));
            }
        }
    }

    /// Closes `service`'s kept connection, if any (the service is gone or stopped).
    pub fn forget(&self, service: &str) {
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        idle.remove(service);
    }
}

/// How one exchange on one connection went wrong.
enum Exchange {
    /// Nothing came back: the connection failed or closed before the first byte of a response.
    Unanswered(io::Error),
    /// Anything else.
    Failed(Failure),
}

/// Writes `request` and reads one response; also says whether the connection may carry another.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> Result<(Response, bool), Exchange> {
    stream.write_all(request).await.map_err(Exchange::Unanswered)?;
    let mut buffer = Vec::with_capacity(1024);
    if read_some(stream, &mut buffer)
        .await
        .map_err(Exchange::Unanswered)?
        == 0
    {
        return Err(Exchange::Unanswered(io::ErrorKind::UnexpectedEof.into()));
    }
    read_response(stream, buffer).await.map_err(Exchange::Failed)
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

/// Reads the rest of a response whose first bytes are in `buffer`.
async fn read_response(stream: &mut TcpStream, mut buffer: Vec<u8>) -> Result<(Response, bool), Failure> {
    let head = loop {
        match parse_head(&buffer)? {
            Some(head) if (100..200).contains(&head.status) => {
                // An interim response (100 Continue, 103 Early Hints): the real one follows.
                buffer.drain(..head.length);
            }
            Some(head) => break head,
            None if buffer.len() > READ_LIMIT => {
                return Err(Failure::Malformed(format!(
                    "a response head over {READ_LIMIT} bytes"
                )));
            }
            None => {
                if read_some(stream, &mut buffer).await.map_err(Failure::Io)? == 0 {
                    return Err(Failure::Io(io::ErrorKind::UnexpectedEof.into()));
                }
            }
        }
    };
    buffer.drain(..head.length);
    let (body, whole) = match head.framing {
        Framing::Empty => (Vec::new(), true),
        Framing::Length(length) => read_length(stream, buffer, length).await?,
        Framing::Chunked => read_chunked(stream, buffer).await?,
        Framing::UntilClose => (read_until_close(stream, buffer).await?, false),
    };
    let response = Response {
        status: head.status,
        body,
    };
    Ok((response, whole && head.keep_alive))
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
        let value = String::from_utf8_lossy(header.value);
        if header.name.eq_ignore_ascii_case("content-length") {
            let parsed: usize = value
                .trim()
                .parse()
                .map_err(|_| Failure::Malformed(format!("Content-Length {value:?}")))?;
            if content_length.is_some_and(|known| known != parsed) {
                return Err(Failure::Malformed("two different Content-Lengths".to_owned()));
            }
            content_length = Some(parsed);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
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

/// A body of `length` bytes, of which the first are in `buffer`; says whether it was read whole (a body
/// longer than [`READ_LIMIT`] is read that far, and its connection not reused).
async fn read_length(
    stream: &mut TcpStream,
    mut buffer: Vec<u8>,
    length: usize,
) -> Result<(Vec<u8>, bool), Failure> {
    let wanted = length.min(READ_LIMIT);
    while buffer.len() < wanted {
        if read_some(stream, &mut buffer).await.map_err(Failure::Io)? == 0 {
            return Err(Failure::Io(io::ErrorKind::UnexpectedEof.into()));
        }
    }
    let whole = buffer.len() == length;
    buffer.truncate(wanted);
    Ok((buffer, whole))
}

/// A body that ends where the connection closes, of which the first bytes are in `buffer`; read up to
/// [`READ_LIMIT`] bytes.
async fn read_until_close(stream: &mut TcpStream, mut buffer: Vec<u8>) -> Result<Vec<u8>, Failure> {
    while buffer.len() < READ_LIMIT {
        if read_some(stream, &mut buffer).await.map_err(Failure::Io)? == 0 {
            break;
        }
    }
    buffer.truncate(READ_LIMIT);
    Ok(buffer)
}

/// A chunked body, of which the first bytes are in `buffer`; decoded up to [`READ_LIMIT`] bytes.
async fn read_chunked(stream: &mut TcpStream, mut buffer: Vec<u8>) -> Result<(Vec<u8>, bool), Failure> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        // A chunk's size line, its data and CRLF; the last chunk has size 0 and is followed by trailers.
        let (size_length, size) = loop {
            match httparse::parse_chunk_size(&buffer[at..]) {
                Ok(httparse::Status::Complete((length, size))) => break (length, size),
                Ok(httparse::Status::Partial) => more(stream, &mut buffer).await?,
                Err(_) => return Err(Failure::Malformed("bad chunk size".to_owned())),
            }
        };
        at += size_length;
        if size == 0 {
            return read_trailers(stream, buffer, at).await.map(|()| (body, true));
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if body.len().saturating_add(size) > READ_LIMIT {
            // Too long to read whole: keep what fits (to quote) and close the connection.
            let room = READ_LIMIT - body.len();
            let available = (buffer.len() - at).min(room);
            body.extend_from_slice(&buffer[at..at + available]);
            return Ok((body, false));
        }
        while buffer.len() < at + size + 2 {
            more(stream, &mut buffer).await?;
        }
        body.extend_from_slice(&buffer[at..at + size]);
        if &buffer[at + size..at + size + 2] != b"\r\n" {
            return Err(Failure::Malformed("a chunk not followed by CRLF".to_owned()));
        }
        at += size + 2;
        if at > READ_LIMIT {
            buffer.drain(..at);
            at = 0;
        }
    }
}

/// The trailer section after the last chunk, up to its empty line.
async fn read_trailers(stream: &mut TcpStream, mut buffer: Vec<u8>, mut at: usize) -> Result<(), Failure> {
    loop {
        match buffer[at..].windows(2).position(|pair| pair == b"\r\n") {
            Some(0) => return Ok(()),
            Some(line) => at += line + 2,
            None if buffer.len() - at > READ_LIMIT => {
                return Err(Failure::Malformed("trailers over the read limit".to_owned()));
            }
            None => more(stream, &mut buffer).await?,
        }
    }
}

/// Reads more bytes; the connection closing here cuts a response short.
async fn more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<(), Failure> {
    match read_some(stream, buffer).await {
        Ok(0) => Err(Failure::Io(io::ErrorKind::UnexpectedEof.into())),
        Ok(_) => Ok(()),
        Err(error) => Err(Failure::Io(error)),
    }
}

/// One read, appended to `buffer`.
async fn read_some(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> io::Result<usize> {
    if buffer.capacity() - buffer.len() < 512 {
        buffer.reserve(buffer.capacity().max(1024));
    }
    stream.read_buf(buffer).await
}
