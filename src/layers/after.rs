//! The one future a layer answers with when it acts on the answer once it comes (stamps the
//! request id, counts the call, checks it against the limits, settles a permit): the inner
//! call's future, and what to do with its answer, done once.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum::http::Response;

/// What a layer does with a call's answer.
pub trait AfterAnswer<B> {
    fn answered(self, response: Response<B>) -> Response<B>;
}

pin_project_lite::pin_project! {
    /// A call on its way, and what its layer does with the answer. Dropped unanswered (the
    /// caller went away), the layer's part is dropped with it, undone.
    pub struct Answering<F, A> {
        #[pin]
        inner: F,
        after: Option<A>,
    }
}

impl<F, A> Answering<F, A> {
    pub fn new(inner: F, after: A) -> Self {
        Self {
            inner,
            after: Some(after),
        }
    }
}

impl<F, A, B> Future for Answering<F, A>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    A: AfterAnswer<B>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok(match this.after.take() {
            Some(after) => after.answered(response),
            None => response,
        }))
    }
}
