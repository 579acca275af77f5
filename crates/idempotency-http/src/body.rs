//! Response bodies: the layer's body type, and buffering up to a limit without losing a
//! byte of a larger body.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// The error type of bodies passing through the layer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response of the layer: a stored or replayed buffer, a problem
/// document, or the handler's own body passed through.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A whole body.
pub(crate) fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The handler's body, boxed.
pub(crate) fn boxed<B>(body: B) -> ResponseBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// What buffering a body found.
pub(crate) enum Buffered {
    /// The whole body within the limit, without trailers.
    Complete(Bytes),
    /// Over the limit, or with trailers: not storable; the body as it was (the frames
    /// read so far, then the rest).
    PassThrough(ResponseBody),
    /// The body failed while being read.
    Failed(BoxError),
}

/// Reads `body` up to `limit` bytes.
pub(crate) async fn buffer<B>(body: B, limit: usize) -> Buffered
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut body = boxed(body);
    let mut data = BytesMut::new();
    loop {
        match body.frame().await {
            None => return Buffered::Complete(data.freeze()),
            Some(Err(e)) => return Buffered::Failed(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) if data.len() + chunk.len() <= limit => data.extend_from_slice(&chunk),
                Ok(chunk) => {
                    let mut read = VecDeque::from([Frame::data(data.freeze())]);
                    read.push_back(Frame::data(chunk));
                    return Buffered::PassThrough(Replay::new(read, body).boxed_unsync());
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().unwrap_or_else(|_| HeaderMap::new());
                    let read =
                        VecDeque::from([Frame::data(data.freeze()), Frame::trailers(trailers)]);
                    let rest = Empty::new().map_err(|never| match never {}).boxed_unsync();
                    return Buffered::PassThrough(Replay::new(read, rest).boxed_unsync());
                }
            },
        }
    }
}

/// Frames already read, then the rest of the body.
struct Replay {
    read: VecDeque<Frame<Bytes>>,
    rest: ResponseBody,
}

impl Replay {
    fn new(read: VecDeque<Frame<Bytes>>, rest: ResponseBody) -> Self {
        Self { read, rest }
    }
}

impl Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self
            .read
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + read);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + read);
        }
        hint
    }
}

/// A response body of the handler the layer can buffer (to store it) or pass on.
pub trait HandlerBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<B> HandlerBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_over_the_limit_passes_through_whole() {
        let body = Full::new(Bytes::from(vec![7u8; 100]));
        let Buffered::PassThrough(body) = buffer(body, 10).await else {
            panic!("expected pass-through");
        };
        let bytes = body.collect().await.expect("body").to_bytes();
        assert_eq!(bytes.len(), 100);
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_buffered() {
        let Buffered::Complete(bytes) = buffer(Full::new(Bytes::from_static(b"abc")), 3).await
        else {
            panic!("expected complete");
        };
        assert_eq!(&bytes[..], b"abc");
    }
}
