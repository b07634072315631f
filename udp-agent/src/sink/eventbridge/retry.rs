//! What to retry, and when.
//!
//! [`classify`] is the one place an SDK error becomes a retry decision;
//! [`is_retryable_entry_code`] is the same decision for the per-entry error
//! codes of a partial failure. [`Backoff`] spaces the attempts: capped
//! exponential backoff with full jitter (the AWS Architecture Blog's
//! "Exponential Backoff And Jitter"), so that many agents throttled at once
//! do not come back in lockstep.

use std::time::Duration;

// The SDK's own lists of throttling and transient error codes, so that the
// sink retries exactly what the SDK's standard retry mode would; server
// faults (5xx) are told by their status, as the SDK does.
use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};
use aws_sdk_eventbridge::{
    config::http::HttpResponse,
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    operation::put_events::PutEventsError,
};

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// EventBridge asked us to slow down: retry after a backoff.
    Throttled,
    /// A transient fault (5xx, timeout, connection): retry after a backoff.
    Transient,
    /// Retrying cannot help (bad request, access denied, our own bug).
    Permanent,
    /// A 2xx answer whose body could not be read: EventBridge most likely
    /// took the request, but which entries it accepted is unknown. Resent
    /// once (a possible duplicate of each entry, not a possible loss); if
    /// the resend ends the same way, the entries are counted delivered
    /// (`unconfirmed`).
    Ambiguous,
}

/// Per-entry error codes of a partial failure (`FailedEntryCount > 0`) that
/// are worth resending: EventBridge documents `ThrottlingException` and
/// `InternalFailure`; `InternalException` is its other spelling of the
/// latter. Anything else (`InvalidArgument`, `MalformedDetail`,
/// `AccessDeniedException`, `NotAuthorizedForSourceException`, …) would
/// fail again.
pub fn is_retryable_entry_code(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException" | "InternalFailure" | "InternalException"
    )
}

/// Classifies a failed PutEvents call.
pub fn classify(err: &SdkError<PutEventsError, HttpResponse>) -> Retry {
    match err {
        // The request could not even be built: serialisation, a bad input.
        SdkError::ConstructionFailure(_) => Retry::Permanent,
        SdkError::TimeoutError(_) => Retry::Transient,
        // Connection refused/reset/closed, DNS, I/O timeouts, and also
        // failures to resolve credentials or the endpoint (an IMDS hiccup is
        // transient). Only an error the connector calls a user error (an
        // invalid URI, a bad TLS setup) is ours to fix.
        SdkError::DispatchFailure(f) => {
            if f.is_user() {
                Retry::Permanent
            } else {
                Retry::Transient
            }
        }
        // A response that did not parse: judge by its status. A 2xx is the
        // service's "accepted" without the per-entry results.
        SdkError::ResponseError(r) => {
            let status = r.raw().status().as_u16();
            if (200..300).contains(&status) {
                return Retry::Ambiguous;
            }
            by_status(status).unwrap_or(Retry::Transient)
        }
        SdkError::ServiceError(s) => {
            // The SDK reports a 2xx it cannot deserialize as a service
            // error without a code: the same ambiguous outcome.
            let status = s.raw().status().as_u16();
            if (200..300).contains(&status) && s.err().code().is_none() {
                return Retry::Ambiguous;
            }
            if let Some(code) = s.err().code() {
                if THROTTLING_ERRORS.contains(&code) {
                    return Retry::Throttled;
                }
                if TRANSIENT_ERRORS.contains(&code) {
                    return Retry::Transient;
                }
            }
            by_status(s.raw().status().as_u16()).unwrap_or(Retry::Permanent)
        }
        // SdkError is non-exhaustive; a new kind is most likely transport.
        _ => Retry::Transient,
    }
}

fn by_status(status: u16) -> Option<Retry> {
    match status {
        429 => Some(Retry::Throttled),
        500..=599 => Some(Retry::Transient),
        400..=499 => Some(Retry::Permanent),
        _ => None,
    }
}

/// The `ErrorCode` and `ErrorMessage` a whole-request failure gives the
/// entries it fails (in the dead-letter file and the per-code counters).
pub fn error_code_and_message(err: &SdkError<PutEventsError, HttpResponse>) -> (String, String) {
    let message = DisplayErrorContext(err).to_string();
    let code = match err {
        SdkError::ConstructionFailure(_) => "ConstructionFailure".to_owned(),
        SdkError::TimeoutError(_) => "Timeout".to_owned(),
        SdkError::DispatchFailure(f) if f.is_timeout() => "Timeout".to_owned(),
        SdkError::DispatchFailure(f) if f.is_io() => "ConnectionError".to_owned(),
        SdkError::DispatchFailure(_) => "DispatchFailure".to_owned(),
        SdkError::ResponseError(r) => format!("HTTP{}", r.raw().status().as_u16()),
        SdkError::ServiceError(s) => match s.err().code() {
            Some(code) => code.to_owned(),
            None => format!("HTTP{}", s.raw().status().as_u16()),
        },
        _ => "Unknown".to_owned(),
    };
    (code, message)
}

/// Capped exponential backoff with full jitter: before retry `n` (0-based),
/// wait a uniformly random time in `[0, min(cap, base * 2^n)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The longest wait before retry `n`: `min(cap, base * 2^n)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random wait before retry `n`.
    pub fn delay(&self, n: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.ceiling(n).as_nanos().min(u128::from(u64::MAX)) as u64;
        Duration::from_nanos(rng.u64(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_eventbridge::error::{ConnectorError, ErrorMetadata};
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    type Err = SdkError<PutEventsError, HttpResponse>;

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty())
    }

    fn service_error(status: u16, code: &str) -> Err {
        let meta = ErrorMetadata::builder()
            .code(code)
            .message("from the test")
            .build();
        SdkError::service_error(PutEventsError::generic(meta), response(status))
    }

    fn io_error() -> Err {
        SdkError::dispatch_failure(ConnectorError::io(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
        ))
    }

    #[test]
    fn throttling_is_retried_as_throttling() {
        assert_eq!(
            classify(&service_error(400, "ThrottlingException")),
            Retry::Throttled
        );
        assert_eq!(
            classify(&service_error(400, "TooManyRequestsException")),
            Retry::Throttled
        );
        // A 429 with an unknown code is throttling too.
        assert_eq!(classify(&service_error(429, "Whatever")), Retry::Throttled);
    }

    #[test]
    fn server_faults_are_retried() {
        assert_eq!(
            classify(&service_error(500, "InternalException")),
            Retry::Transient
        );
        assert_eq!(
            classify(&service_error(500, "InternalFailure")),
            Retry::Transient
        );
        assert_eq!(
            classify(&service_error(503, "ServiceUnavailable")),
            Retry::Transient
        );
        assert_eq!(classify(&service_error(502, "")), Retry::Transient);
    }

    #[test]
    fn client_errors_are_not_retried() {
        for code in [
            "AccessDeniedException",
            "ValidationException",
            "ResourceNotFoundException",
            "UnrecognizedClientException",
            "InvalidSignatureException",
        ] {
            assert_eq!(
                classify(&service_error(400, code)),
                Retry::Permanent,
                "{code}"
            );
        }
    }

    #[test]
    fn transport_failures_are_retried() {
        assert_eq!(classify(&io_error()), Retry::Transient);
        let timeout: Err = SdkError::timeout_error("attempt timed out");
        assert_eq!(classify(&timeout), Retry::Transient);
        let connect_timeout: Err =
            SdkError::dispatch_failure(ConnectorError::timeout("connect timed out".into()));
        assert_eq!(classify(&connect_timeout), Retry::Transient);
        // Credentials or endpoint resolution failing surface as "other".
        let other: Err =
            SdkError::dispatch_failure(ConnectorError::other("no credentials".into(), None));
        assert_eq!(classify(&other), Retry::Transient);
    }

    #[test]
    fn our_own_mistakes_are_not_retried() {
        let user: Err = SdkError::dispatch_failure(ConnectorError::user("bad uri".into()));
        assert_eq!(classify(&user), Retry::Permanent);
        let construction: Err = SdkError::construction_failure("cannot serialise");
        assert_eq!(classify(&construction), Retry::Permanent);
    }

    #[test]
    fn unparsable_responses_are_judged_by_status() {
        let e = |status| -> Err { SdkError::response_error("garbage", response(status)) };
        assert_eq!(classify(&e(502)), Retry::Transient);
        assert_eq!(classify(&e(429)), Retry::Throttled);
        assert_eq!(classify(&e(403)), Retry::Permanent);
        assert_eq!(classify(&e(200)), Retry::Ambiguous);
        assert_eq!(classify(&e(204)), Retry::Ambiguous);
        // How the SDK reports a 2xx body it cannot deserialize.
        let unread: Err = SdkError::service_error(
            PutEventsError::generic(ErrorMetadata::builder().build()),
            response(200),
        );
        assert_eq!(classify(&unread), Retry::Ambiguous);
    }

    #[test]
    fn whole_request_failures_name_their_code() {
        assert_eq!(
            error_code_and_message(&service_error(400, "AccessDeniedException")).0,
            "AccessDeniedException"
        );
        assert_eq!(error_code_and_message(&io_error()).0, "ConnectionError");
        let timeout: Err = SdkError::timeout_error("attempt timed out");
        assert_eq!(error_code_and_message(&timeout).0, "Timeout");
        let (code, message) = error_code_and_message(&service_error(400, "ThrottlingException"));
        assert_eq!(code, "ThrottlingException");
        assert!(message.contains("from the test"), "{message}");
    }

    #[test]
    fn entry_codes() {
        assert!(is_retryable_entry_code("ThrottlingException"));
        assert!(is_retryable_entry_code("InternalFailure"));
        assert!(is_retryable_entry_code("InternalException"));
        for code in [
            "InvalidArgument",
            "MalformedDetail",
            "AccessDeniedException",
            "NotAuthorizedForSourceException",
            "",
        ] {
            assert!(!is_retryable_entry_code(code), "{code}");
        }
    }

    #[test]
    fn backoff_ceiling_doubles_up_to_the_cap() {
        let b = Backoff::default();
        let ms = |n| b.ceiling(n).as_millis();
        assert_eq!(
            (0..9).map(ms).collect::<Vec<_>>(),
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        // No overflow however many retries.
        assert_eq!(b.ceiling(200), Duration::from_secs(10));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_ceiling() {
        let b = Backoff::default();
        let mut rng = fastrand::Rng::with_seed(7);
        for n in 0..12 {
            let ceiling = b.ceiling(n);
            let delays: Vec<Duration> = (0..2000).map(|_| b.delay(n, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "retry {n}");
            // Spread over the whole range: some below a quarter, some above
            // three quarters of the ceiling.
            assert!(delays.iter().any(|d| *d < ceiling / 4), "retry {n}");
            assert!(delays.iter().any(|d| *d > ceiling * 3 / 4), "retry {n}");
        }
    }
}
