//! The PutEvents transport of `udp-agent run` ([`Service`]) and the
//! reading of an answer.
//!
//! A PutEvents response lists one result per request entry, in order: an
//! `EventId` for an accepted entry, or an `ErrorCode`/`ErrorMessage`. A
//! request can succeed as a whole while some of its entries fail
//! (`FailedEntryCount > 0`); [`split`] sorts the entries into delivered,
//! worth resending (only those, like vector's `RetryPartial`), and given up.

use std::{future::Future, pin::Pin};

use aws_sdk_eventbridge::{Client, primitives::DateTime, types::PutEventsRequestEntry};

pub use super::transport::EntryResult;
use super::{
    dead_letter::Failed,
    direct::Direct,
    retry::is_retryable_entry_code,
    transport::{PutEvents, PutEventsResult},
};
use crate::encode::Entry;

/// The PutEvents transport of `udp-agent run`: the SDK's client, with the
/// direct path ([`Direct`]) taking over once it knows the endpoint.
pub struct Service {
    pub client: Client,
    pub direct: Option<Direct>,
    /// Global endpoint ID sent as `EndpointId` (SigV4a: the SDK only).
    pub endpoint_id: Option<String>,
}

impl PutEvents for Service {
    fn put_events<'a>(
        &'a self,
        entries: &'a [Entry],
    ) -> Pin<Box<dyn Future<Output = PutEventsResult> + Send + 'a>> {
        Box::pin(put_events(
            &self.client,
            self.direct.as_ref(),
            entries,
            self.endpoint_id.as_deref(),
        ))
    }
}

/// Sends `entries` as one PutEvents request: through `direct` once it knows
/// the endpoint, through the SDK otherwise (the first request, which
/// teaches `direct` the endpoint, and every request with an `endpoint_id`).
async fn put_events(
    client: &Client,
    direct: Option<&Direct>,
    entries: &[Entry],
    endpoint_id: Option<&str>,
) -> PutEventsResult {
    if let Some(direct) = direct
        && endpoint_id.is_none()
        && direct.ready()
    {
        return direct.put_events(entries).await;
    }
    let request = client
        .put_events()
        .set_entries(Some(entries.iter().map(request_entry).collect()))
        .set_endpoint_id(endpoint_id.map(str::to_owned));
    let output = match direct {
        Some(direct) if endpoint_id.is_none() && direct.undecided() => {
            request
                .customize()
                .interceptor(direct.recorder())
                .send()
                .await?
        }
        _ => request.send().await?,
    };
    Ok(output.entries().iter().map(EntryResult::from).collect())
}

/// The SDK's request entry: exactly the fields the stdout sink prints.
pub fn request_entry(e: &Entry) -> PutEventsRequestEntry {
    PutEventsRequestEntry::builder()
        .source(&*e.source)
        .detail_type(&*e.detail_type)
        .detail(e.detail.json())
        .time(DateTime::from(e.time))
        .event_bus_name(&*e.event_bus_name)
        .build()
}

/// A response sorted out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Entries accepted.
    pub delivered: usize,
    /// Entries refused with a retryable code: resend these (and only these).
    pub retry: Vec<Failed>,
    /// Entries refused with any other code: give up on these.
    pub failed: Vec<Failed>,
    /// Entries refused with `ThrottlingException`.
    pub throttled: usize,
}

/// The code given to an entry the response did not mention. It cannot
/// happen with EventBridge (one result per entry); if it does, the entry is
/// resent: a possible duplicate rather than a silent loss.
pub const MISSING_RESULT: &str = "MissingResult";

/// Pairs each entry with its result (in request order) and sorts them.
pub fn split(entries: Vec<Entry>, results: Vec<EntryResult>) -> Outcome {
    let mut out = Outcome::default();
    let mut results = results.into_iter();
    for entry in entries {
        match results.next() {
            Some(EntryResult::Accepted) => out.delivered += 1,
            Some(EntryResult::Failed { code, message }) => {
                if code == "ThrottlingException" {
                    out.throttled += 1;
                }
                let failed = Failed {
                    entry,
                    code,
                    message,
                };
                if is_retryable_entry_code(&failed.code) {
                    out.retry.push(failed);
                } else {
                    out.failed.push(failed);
                }
            }
            None => out.retry.push(Failed {
                entry,
                code: MISSING_RESULT.to_owned(),
                message: "the PutEvents response had no result for this entry".to_owned(),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        time::{Duration, UNIX_EPOCH},
    };

    use super::*;

    fn entry(n: u32) -> Entry {
        Entry {
            source: Arc::from("udp.raw"),
            detail_type: Arc::from("UdpPacket"),
            event_bus_name: Arc::from("orders"),
            detail: format!("{{\"n\":{n}}}").into(),
            time: UNIX_EPOCH + Duration::from_millis(1_795_822_397_250),
            capture_ns: 0,
        }
    }

    fn fail(code: &str) -> EntryResult {
        EntryResult::Failed {
            code: code.into(),
            message: format!("{code} message"),
        }
    }

    fn details(failed: &[Failed]) -> Vec<String> {
        failed.iter().map(|f| f.entry.detail.json()).collect()
    }

    #[test]
    fn all_accepted() {
        let out = split((0..3).map(entry).collect(), vec![EntryResult::Accepted; 3]);
        assert_eq!(out.delivered, 3);
        assert!(out.retry.is_empty() && out.failed.is_empty());
    }

    #[test]
    fn partial_failure_resends_only_retryable_entries() {
        let out = split(
            (0..6).map(entry).collect(),
            vec![
                EntryResult::Accepted,
                fail("ThrottlingException"),
                fail("InvalidArgument"),
                fail("InternalFailure"),
                fail("MalformedDetail"),
                fail("AccessDeniedException"),
            ],
        );
        assert_eq!(out.delivered, 1);
        assert_eq!(out.throttled, 1);
        assert_eq!(details(&out.retry), [r#"{"n":1}"#, r#"{"n":3}"#]);
        assert_eq!(
            details(&out.failed),
            [r#"{"n":2}"#, r#"{"n":4}"#, r#"{"n":5}"#]
        );
        // Each keeps its own code and message for the dead-letter file.
        let codes: Vec<&str> = out.failed.iter().map(|f| f.code.as_str()).collect();
        assert_eq!(
            codes,
            [
                "InvalidArgument",
                "MalformedDetail",
                "AccessDeniedException"
            ]
        );
        assert_eq!(out.failed[0].message, "InvalidArgument message");
        assert_eq!(out.retry[1].code, "InternalFailure");
    }

    #[test]
    fn entries_without_a_result_are_resent() {
        let out = split((0..3).map(entry).collect(), vec![EntryResult::Accepted]);
        assert_eq!(out.delivered, 1);
        assert_eq!(details(&out.retry), [r#"{"n":1}"#, r#"{"n":2}"#]);
        assert!(out.retry.iter().all(|f| f.code == MISSING_RESULT));
    }

    #[test]
    fn the_request_entry_carries_every_field() {
        let e = entry(7);
        let r = request_entry(&e);
        assert_eq!(r.source(), Some("udp.raw"));
        assert_eq!(r.detail_type(), Some("UdpPacket"));
        assert_eq!(r.detail(), Some(r#"{"n":7}"#));
        assert_eq!(r.event_bus_name(), Some("orders"));
        assert_eq!(r.time().unwrap().secs(), 1_795_822_397);
        assert_eq!(r.time().unwrap().subsec_nanos(), 250_000_000);
        assert!(r.resources().is_empty());
    }
}
