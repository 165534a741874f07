//! The router's own answers: a fixed status and a few words each, with no
//! detail that would help whoever probes the router. Never 410: Telegram
//! deletes a webhook that answers 410.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

/// Seconds Telegram is asked to wait before delivering again after a 503.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// A request the router answers itself instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The body broke off before its end.
    BadRequest,
    /// The source address is not an allowed one.
    Forbidden,
    /// No live route has this path (whether it never existed or expired).
    NotFound,
    /// The secret-token header is missing, wrong, or given more than once.
    Unauthorized,
    /// Anything but POST.
    MethodNotAllowed,
    /// The body did not arrive within the body read timeout.
    RequestTimeout,
    /// The body is over the limit.
    PayloadTooLarge,
    /// The backend could not be reached or gave no usable answer.
    BadGateway,
    /// Too many requests in flight, overall or for this bot.
    OverCapacity,
    /// The backend did not answer within the backend timeout.
    GatewayTimeout,
}

impl Refusal {
    /// The status answered.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::OverCapacity => StatusCode::SERVICE_UNAVAILABLE,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The body answered.
    pub fn body(self) -> &'static str {
        match self {
            Self::BadRequest => "bad request\n",
            Self::Forbidden => "forbidden\n",
            Self::NotFound => "not found\n",
            Self::Unauthorized => "unauthorized\n",
            Self::MethodNotAllowed => "method not allowed\n",
            Self::RequestTimeout => "request timeout\n",
            Self::PayloadTooLarge => "payload too large\n",
            Self::BadGateway => "bad gateway\n",
            Self::OverCapacity => "over capacity\n",
            Self::GatewayTimeout => "gateway timeout\n",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            self.body(),
        )
            .into_response();
        let headers = response.headers_mut();
        match self {
            Self::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            Self::OverCapacity => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Refusal; 10] = [
        Refusal::BadRequest,
        Refusal::Forbidden,
        Refusal::NotFound,
        Refusal::Unauthorized,
        Refusal::MethodNotAllowed,
        Refusal::RequestTimeout,
        Refusal::PayloadTooLarge,
        Refusal::BadGateway,
        Refusal::OverCapacity,
        Refusal::GatewayTimeout,
    ];

    #[test]
    fn every_refusal_is_small_and_never_410() {
        let codes: Vec<u16> = ALL.iter().map(|r| r.status().as_u16()).collect();
        assert_eq!(codes, [400, 403, 404, 401, 405, 408, 413, 502, 503, 504]);
        for refusal in ALL {
            assert!(refusal.body().len() < 32);
            let response = refusal.into_response();
            assert_ne!(response.status(), StatusCode::GONE);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "text/plain; charset=utf-8"
            );
        }
    }

    #[test]
    fn method_not_allowed_says_post_and_over_capacity_says_when() {
        let refused = Refusal::MethodNotAllowed.into_response();
        assert_eq!(refused.headers()[header::ALLOW], "POST");
        let busy = Refusal::OverCapacity.into_response();
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
        assert!(
            Refusal::NotFound
                .into_response()
                .headers()
                .get(header::ALLOW)
                .is_none()
        );
    }
}
