//! The PutEvents call as the sink sees it ([`PutEvents`]): entries in, one
//! result per entry (or the error of the whole request) out. Two
//! implementations: the SDK's client with the direct path beside it
//! ([`super::service::Service`]), and a test's fake.

use std::{future::Future, pin::Pin};

use aws_sdk_eventbridge::{
    config::http::HttpResponse, error::SdkError, operation::put_events::PutEventsError,
    types::PutEventsResultEntry,
};

use crate::encode::Entry;

/// What the service said about one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryResult {
    Accepted,
    Failed { code: String, message: String },
}

impl From<&PutEventsResultEntry> for EntryResult {
    fn from(r: &PutEventsResultEntry) -> Self {
        match r.error_code() {
            None => EntryResult::Accepted,
            Some(code) => EntryResult::Failed {
                code: code.to_owned(),
                message: r.error_message().unwrap_or_default().to_owned(),
            },
        }
    }
}

/// A failed request, in the SDK's own error type, so that one
/// classification ([`super::retry::classify`]) serves every transport.
pub type RequestError = SdkError<PutEventsError, HttpResponse>;

/// One result per entry, in request order, or the request's error.
pub type PutEventsResult = Result<Vec<EntryResult>, RequestError>;

/// Sends one PutEvents request.
pub trait PutEvents: Send + Sync {
    /// Boxed: the SDK's future is tens of kilobytes, and inline it would
    /// make every request task that large.
    fn put_events<'a>(
        &'a self,
        entries: &'a [Entry],
    ) -> Pin<Box<dyn Future<Output = PutEventsResult> + Send + 'a>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_read_from_the_sdk_shape() {
        let ok = PutEventsResultEntry::builder().event_id("e-1").build();
        let bad = PutEventsResultEntry::builder()
            .error_code("MalformedDetail")
            .error_message("Detail is malformed.")
            .build();
        assert_eq!(EntryResult::from(&ok), EntryResult::Accepted);
        assert_eq!(
            EntryResult::from(&bad),
            EntryResult::Failed {
                code: "MalformedDetail".into(),
                message: "Detail is malformed.".into()
            }
        );
    }
}
