//! Responses and request bodies: JSON in and out, and every error as `{"success": false, "error": "..."}`
//! with its status.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Method, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::registry::RegistryError;
use crate::supervisor::ControlError;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The response type of every handler.
pub type Reply = Response<ReplyBody>;

/// A response body: whole, or a stream of chunks (the event stream) that ends when its sender is dropped.
#[derive(Debug)]
pub struct ReplyBody(Contents);

#[derive(Debug)]
enum Contents {
    Whole(Full<Bytes>),
    /// Chunks sent one after the other, with their total length known.
    Parts(std::collections::VecDeque<Bytes>),
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

impl ReplyBody {
    /// A body of these bytes.
    pub fn whole(bytes: Bytes) -> Self {
        Self(Contents::Whole(Full::new(bytes)))
    }

    /// A body of these chunks, one after the other (none copied into one buffer).
    pub fn parts(parts: impl IntoIterator<Item = Bytes>) -> Self {
        Self(Contents::Parts(
            parts.into_iter().filter(|part| !part.is_empty()).collect(),
        ))
    }

    /// A body streamed from `chunks`, sent as they come; it ends when the sender is dropped. The sender
    /// sees the receiver closed when the client went away.
    pub fn stream(chunks: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        Self(Contents::Stream(chunks))
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().0 {
            Contents::Whole(whole) => std::pin::Pin::new(whole).poll_frame(cx),
            Contents::Parts(parts) => {
                std::task::Poll::Ready(parts.pop_front().map(|part| Ok(hyper::body::Frame::data(part))))
            }
            Contents::Stream(chunks) => chunks
                .poll_recv(cx)
                .map(|chunk| chunk.map(|bytes| Ok(hyper::body::Frame::data(bytes)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Contents::Whole(whole) => whole.is_end_stream(),
            Contents::Parts(parts) => parts.is_empty(),
            Contents::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match &self.0 {
            Contents::Whole(whole) => whole.size_hint(),
            Contents::Parts(parts) => {
                hyper::body::SizeHint::with_exact(parts.iter().map(|part| part.len() as u64).sum())
            }
            Contents::Stream(_) => hyper::body::SizeHint::default(),
        }
    }
}

/// A request that cannot be served, with the status that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for people.
    pub message: String,
    /// Methods allowed on the path (405 only).
    pub allow: Vec<Method>,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            allow: Vec::new(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: no such service or route.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 405 with the allowed methods.
    pub fn method_not_allowed(allow: Vec<Method>) -> Self {
        let list: Vec<&str> = allow.iter().map(Method::as_str).collect();
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("method not allowed; allowed: {}", list.join(", ")),
            allow,
        }
    }

    /// The JSON error response.
    pub fn into_reply(self) -> Reply {
        let mut reply = json_reply(self.status, &json!({"success": false, "error": self.message}));
        if !self.allow.is_empty() {
            let list: Vec<&str> = self.allow.iter().map(Method::as_str).collect();
            if let Ok(value) = HeaderValue::from_str(&list.join(", ")) {
                reply.headers_mut().insert(header::ALLOW, value);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            reply
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        reply
    }
}

impl From<ControlError> for ApiError {
    fn from(error: ControlError) -> Self {
        let status = match &error {
            ControlError::UnknownService(_) => StatusCode::NOT_FOUND,
            ControlError::Refused { .. }
            | ControlError::NotManaged(_)
            | ControlError::Blocked { .. }
            | ControlError::Busy(_)
            | ControlError::Stopped(_)
            | ControlError::Standby(_)
            | ControlError::ReloadInProgress => StatusCode::CONFLICT,
            ControlError::StartFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ControlError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, error.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        let status = match &error {
            RegistryError::UnknownService(_) => StatusCode::NOT_FOUND,
            RegistryError::Configured(_) => StatusCode::CONFLICT,
            // Not a conflict with the entry asked for: no room for any new one (WebDAV's "cannot store").
            RegistryError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
            RegistryError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, error.to_string())
    }
}

/// A JSON response.
pub fn json_reply(status: StatusCode, body: &impl Serialize) -> Reply {
    match serde_json::to_vec(body) {
        Ok(bytes) => bytes_reply(status, "application/json", Bytes::from(bytes)),
        Err(error) => bytes_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            Bytes::from(json!({"success": false, "error": error.to_string()}).to_string()),
        ),
    }
}

/// A response with a body of `content_type`.
pub fn bytes_reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Reply {
    body_reply(status, content_type, ReplyBody::whole(body))
}

/// A response with `body`, of `content_type`.
pub fn body_reply(status: StatusCode, content_type: &'static str, body: ReplyBody) -> Reply {
    let mut reply = Response::new(body);
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

/// Reads a JSON body into `T`: at most [`BODY_LIMIT`] bytes (413), `application/json` when not empty (415),
/// well-formed with the right types (400). An empty body is `T::default()`.
pub async fn read_json<T, B>(headers: &HeaderMap, body: B) -> Result<T, ApiError>
where
    T: DeserializeOwned + Default,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {BODY_LIMIT} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > BODY_LIMIT as u64) {
        return Err(too_large());
    }
    let bytes = match Limited::new(body, BODY_LIMIT).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(too_large());
        }
        Err(error) => return Err(ApiError::bad_request(format!("cannot read the body: {error}"))),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON (Content-Type: application/json)",
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {error}")))
}
