//! `Authorization/Check` answered before tonic's router. It is the one method
//! every request pays for, and a unary gRPC call is simple to frame: a 5-byte
//! prefix, one protobuf message, a `grpc-status` trailer. Every other request
//! (health, unknown methods) goes on to tonic's routes. tonic's transport still
//! runs below this layer: TLS, `grpc-timeout`, HTTP/2 settings, graceful shutdown.
//!
//! Why: measured with h2load against do-nothing servers on this machine, tonic's
//! router, codec and generated service cost about 4.5 µs of CPU per Check more
//! than hyper serving the same answer, not counting CheckRequest decoding. That
//! was a quarter of a cache-hit Check. The framing rules are tonic's: one message
//! of at most `MAX_MESSAGE_BYTES`, no compression (none is offered), and the same
//! status codes for what does not decode.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Either, Limited};
use hyper::body::{Body, Frame};
use prost::Message;
use tonic::codegen::http::{self, header, HeaderMap, HeaderValue, Request, Response};
use tonic::Status;

use crate::pipeline::authorize::Authorizer;
use crate::server::proto::envoy::service::auth::v3::CheckRequest;
use crate::server::wire;

/// The method's path, as Envoy calls it.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// tonic's default limit for a received message (4 MiB), kept so a Check is refused
/// exactly where it was before.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The gRPC message prefix: a compression flag and a big-endian length.
const PREFIX_BYTES: usize = 5;

/// The answer's body: tonic's for the routes it serves, `Unary` for Check.
pub type RouteBody = Either<tonic::body::Body, Unary>;

/// Puts `CheckRoute` in front of tonic's routes.
#[derive(Clone)]
pub struct CheckLayer {
    authorizer: Arc<Authorizer>,
}

impl CheckLayer {
    pub fn new(authorizer: Arc<Authorizer>) -> CheckLayer {
        CheckLayer { authorizer }
    }
}

impl<S> tower::Layer<S> for CheckLayer {
    type Service = CheckRoute<S>;

    fn layer(&self, inner: S) -> CheckRoute<S> {
        CheckRoute { inner, authorizer: Arc::clone(&self.authorizer) }
    }
}

/// Check requests are answered here; every other request goes to `inner`.
#[derive(Clone)]
pub struct CheckRoute<S> {
    inner: S,
    authorizer: Arc<Authorizer>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> tower::Service<Request<tonic::body::Body>> for CheckRoute<S>
where
    S: tower::Service<Request<tonic::body::Body>, Response = Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<RouteBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() == CHECK_PATH && request.method() == http::Method::POST {
            let authorizer = Arc::clone(&self.authorizer);
            // Only the body: this future is allocated per Check, and the request's
            // head would be most of it.
            let body = request.into_body();
            return Box::pin(async move { Ok(check(&authorizer, body).await.map(Either::Right)) });
        }
        // `poll_ready` readied this clone's inner service; the clone left behind
        // takes its place (tower's usual swap for services called from `&mut self`).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move { inner.call(request).await.map(|response| response.map(Either::Left)) })
    }
}

/// One Check: the message read and decoded, decided, and answered with its
/// `grpc-status`; a request that cannot be read gets tonic's status for it.
async fn check(authorizer: &Authorizer, body: tonic::body::Body) -> Response<Unary> {
    let message = match read_message(body).await {
        Ok(message) => message,
        Err(status) => return status.into_http(),
    };
    let request = match CheckRequest::decode(message) {
        Ok(request) => request,
        Err(e) => return Status::internal(format!("cannot decode the CheckRequest: {e}")).into_http(),
    };
    let input = wire::check_input(request);
    let config = authorizer.checker().config();
    let response = authorizer.authorize(input, |decision| wire::check_response(decision, config)).await;
    // A few hundred bytes; a length the prefix cannot carry is refused, never cut.
    let encoded_len = response.encoded_len();
    let Ok(len) = u32::try_from(encoded_len) else {
        return Status::internal("the CheckResponse is too large to frame").into_http();
    };
    let mut body = BytesMut::with_capacity(PREFIX_BYTES + encoded_len);
    body.put_u8(0);
    body.put_u32(len);
    if response.encode(&mut body).is_err() {
        return Status::internal("cannot encode the CheckResponse").into_http();
    }
    let mut answer = Response::new(Unary { data: Some(body.freeze()), trailers: Some(ok_trailers()) });
    answer.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    answer
}

/// The one message of a unary request's body: at most `MAX_MESSAGE_BYTES`, not
/// compressed, nothing after it.
async fn read_message(body: tonic::body::Body) -> Result<Bytes, Status> {
    let limit = PREFIX_BYTES + MAX_MESSAGE_BYTES;
    let collected = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: the limit is: {MAX_MESSAGE_BYTES} bytes"
            )))
        }
        Err(e) => return Err(Status::from_error(e)),
    };
    frame(collected)
}

/// The message inside one gRPC frame.
fn frame(mut bytes: Bytes) -> Result<Bytes, Status> {
    if bytes.len() < PREFIX_BYTES {
        return Err(Status::internal("Missing request message."));
    }
    let compressed = bytes.get_u8();
    let len = usize::try_from(bytes.get_u32()).unwrap_or(usize::MAX);
    if compressed != 0 {
        return Err(Status::unimplemented("Message compressed, compression support not enabled."));
    }
    if len > MAX_MESSAGE_BYTES {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {MAX_MESSAGE_BYTES} bytes"
        )));
    }
    if bytes.len() != len {
        // A frame cut short, or a second message: a unary method takes exactly one.
        return Err(Status::internal("the request body is not exactly one gRPC message"));
    }
    Ok(bytes)
}

fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}

/// A unary answer's body: its one message, then the trailers. Empty (the
/// trailers-only form `Status::into_http` makes) by default.
#[derive(Debug, Default)]
pub struct Unary {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Unary {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|trailers| Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(flag: u8, message: &[u8], declared: u32) -> Bytes {
        let mut bytes = vec![flag];
        bytes.extend_from_slice(&declared.to_be_bytes());
        bytes.extend_from_slice(message);
        Bytes::from(bytes)
    }

    #[test]
    fn the_path_is_the_generated_services_method() {
        use crate::server::proto::envoy::service::auth::v3::authorization_server::SERVICE_NAME;
        assert_eq!(CHECK_PATH, format!("/{SERVICE_NAME}/Check"));
    }

    #[test]
    fn exactly_one_uncompressed_message_is_read() {
        assert_eq!(frame(framed(0, b"abc", 3)).ok(), Some(Bytes::from_static(b"abc")));
        assert_eq!(frame(framed(0, b"", 0)).ok(), Some(Bytes::new()));
        let code = |bytes: Bytes| frame(bytes).err().map(|s| s.code());
        assert_eq!(code(Bytes::new()), Some(tonic::Code::Internal));
        assert_eq!(code(Bytes::from_static(&[0, 0, 0])), Some(tonic::Code::Internal));
        assert_eq!(code(framed(1, b"abc", 3)), Some(tonic::Code::Unimplemented));
        assert_eq!(code(framed(0, b"ab", 3)), Some(tonic::Code::Internal));
        assert_eq!(code(framed(0, b"abcd", 3)), Some(tonic::Code::Internal));
        assert_eq!(code(framed(0, b"", u32::MAX)), Some(tonic::Code::OutOfRange));
    }

    /// The size of the future `f` returns, without running it.
    fn future_size<'a, F, Fut>(_: F) -> usize
    where
        F: FnOnce(&'a Authorizer, tonic::body::Body) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn a_checks_future_fits_the_allocators_per_thread_cache() {
        // Every Check's future is boxed. glibc serves blocks up to 1032 bytes from
        // a per-thread cache; a larger one takes its arenas' slow path (and a lock)
        // each time. `call` adds the `Arc<Authorizer>` and its state to this one.
        let size = future_size(check);
        assert!(size <= 960, "the Check future is {size} bytes");
    }

    #[tokio::test]
    async fn a_unary_body_is_its_message_then_the_trailers() {
        let body = Unary { data: Some(Bytes::from_static(b"m")), trailers: Some(ok_trailers()) };
        let Ok(collected) = body.collect().await;
        assert_eq!(collected.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.as_bytes()), Some(&b"0"[..]));
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"m"));
        assert!(Unary::default().is_end_stream());
    }
}
