//! PutEvents without the SDK's orchestrator: the sink's hot path.
//!
//! Why. Under callgrind (`examples/sink_speed.rs`) one PutEvents request of
//! ten 64-byte datagrams cost about 470,000 instructions in the SDK, SHA-256
//! aside: its generic JSON serialiser, SigV4's general canonical-request
//! builder, a dozen interceptors, the config bag, stalled-stream and
//! timeout wrappers, response deserialisation. At 10,000 requests/s (the
//! largest Regional PutEvents quota) that is more than a core. A PutEvents
//! request is always the same shape (`POST /`, four headers, a JSON list),
//! so this module writes it directly: the body into one buffer, a SigV4
//! signature whose signing key is derived once a day instead of once per
//! request, and the call on hyper's pooled HTTP/1.1 client.
//!
//! What stays the SDK's, so that both paths behave alike:
//! - the endpoint: the first request goes through the SDK, and the URL it
//!   resolved (Region, partition, FIPS/dual-stack settings or
//!   --endpoint-url) is recorded by an interceptor and used from then on;
//! - credentials: the provider chain of the client's configuration, cached
//!   here and refreshed in the background from five minutes before they
//!   expire (instance-role credentials rotate hourly), see
//!   [`CredentialCache`];
//! - errors: failures are [`SdkError`]s of the same kinds the SDK would
//!   raise (dispatch failure, timeout, service error with its code, response
//!   error), so [`super::retry`] classifies both paths with one function.
//!
//! Requests with --endpoint-id (global endpoints, signed with SigV4a), and
//! requests to an endpoint that the environment's HTTP(S)_PROXY/ALL_PROXY
//! (and NO_PROXY) send through a proxy, always go through the SDK.

use std::{
    sync::{Arc, Mutex, OnceLock, RwLock},
    time::{Duration, SystemTime},
};

use aws_sdk_eventbridge::{
    config::{
        ConfigBag, Credentials, Intercept, ProvideCredentials, RuntimeComponents,
        SharedCredentialsProvider, http::HttpResponse,
        interceptors::BeforeTransmitInterceptorContextRef,
    },
    error::{ConnectorError, ErrorMetadata, SdkError},
    operation::put_events::PutEventsError,
};
use aws_smithy_runtime_api::{box_error::BoxError, http::StatusCode};
use aws_smithy_types::{
    body::SdkBody,
    date_time::{DateTime, Format},
};
use http_body_util::{BodyExt, Full};
use hyper::{
    Request,
    body::Bytes,
    header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderName, HeaderValue, USER_AGENT},
};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::{
        legacy::{Client as HttpClient, connect::HttpConnector},
        proxy::matcher::Matcher,
    },
    rt::{TokioExecutor, TokioTimer},
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::{
    retry::Backoff,
    settings::Connection,
    transport::{EntryResult, PutEventsResult},
};
use crate::encode::{Entry, push_json_bytes};

/// The service name in SigV4 credential scopes.
const SERVICE: &str = "events";
const TARGET: &str = "AWSEvents.PutEvents";
const JSON_1_1: &str = "application/x-amz-json-1.1";
/// Credentials are refreshed, in the background, from this long before
/// they expire: EC2 makes new instance-role credentials available at least
/// five minutes before the old ones expire.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// Waits between refresh attempts that brought nothing newer (or failed):
/// the n-th waits between half and all of `min(cap, base * 2^n)`.
const REFRESH_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(2),
    cap: Duration::from_secs(60),
};
/// Longest a refresh attempt may take (IMDS has shorter timeouts and
/// retries of its own).
const REFRESH_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle pooled connections are closed after this long: well under the idle
/// timeouts of AWS's load balancers (60 s and more), so a reused connection
/// is rarely one the server is closing.
const POOL_IDLE: Duration = Duration::from_secs(20);

/// The direct PutEvents client. Cheap to share; one per sink.
pub struct Direct {
    http: HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Set by the first request sent through the SDK: where direct
    /// requests go, or `None` if they stay with the SDK.
    endpoint: Arc<OnceLock<Option<Endpoint>>>,
    region: String,
    credentials: CredentialCache,
    /// (date `YYYYMMDD`, secret key, signing key).
    signing_key: Mutex<Option<(String, String, Vec<u8>)>>,
    timeout: Duration,
    user_agent: HeaderValue,
}

/// Where requests go, as the SDK resolved it.
#[derive(Clone, Debug)]
struct Endpoint {
    uri: hyper::Uri,
    host: HeaderValue,
    /// The canonical URI of SigV4 (the path, `/` for AWS's endpoints).
    path: String,
}

impl Endpoint {
    /// `None` for a URL this module does not sign (a path that would need
    /// percent-encoding, a query): those stay with the SDK.
    fn parse(url: &str) -> Option<Endpoint> {
        let uri: hyper::Uri = url.parse().ok()?;
        let host = HeaderValue::from_str(uri.authority()?.as_str()).ok()?;
        if uri.query().is_some() {
            return None;
        }
        let path = match uri.path() {
            "" => "/",
            p => p,
        };
        if !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
        {
            return None;
        }
        Some(Endpoint {
            path: path.to_owned(),
            host,
            uri,
        })
    }
}

impl Direct {
    /// A direct client using the Region and credentials of `client`'s
    /// configuration. `None` (the SDK then sends every request) if either
    /// is missing or TLS cannot be set up.
    pub fn new(
        connection: &Connection,
        timeout: Duration,
        connect_timeout: Duration,
        max_idle: usize,
    ) -> Option<Direct> {
        let region = connection.client.config().region()?.to_string();
        let provider = connection.credentials.clone()?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        // Requests are small and latency counts: no Nagle delay.
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let https = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        {
            Ok(b) => b.https_or_http().enable_http1().wrap_connector(http),
            Err(e) => {
                warn!(error = %e, "EventBridge: no TLS root certificates for the direct client; every request goes through the SDK");
                return None;
            }
        };
        let http = HttpClient::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(max_idle)
            .build(https);
        Some(Direct {
            http,
            endpoint: Arc::default(),
            region,
            credentials: CredentialCache::new(provider),
            signing_key: Mutex::new(None),
            timeout,
            user_agent: HeaderValue::from_static(concat!("udp-agent/", env!("CARGO_PKG_VERSION"))),
        })
    }

    /// True once the endpoint is known: requests can skip the SDK.
    pub fn ready(&self) -> bool {
        self.endpoint.get().is_some_and(Option::is_some)
    }

    /// True until a request through the SDK has shown where requests go
    /// (send it with [`Direct::recorder`]).
    pub fn undecided(&self) -> bool {
        self.endpoint.get().is_none()
    }

    /// The interceptor that records the endpoint of a request sent through
    /// the SDK.
    pub fn recorder(&self) -> RecordEndpoint {
        RecordEndpoint(self.endpoint.clone())
    }

    /// Sends `entries` as one PutEvents request. Call only when [`ready`].
    ///
    /// [`ready`]: Direct::ready
    pub async fn put_events(&self, entries: &[Entry]) -> PutEventsResult {
        let endpoint = self
            .endpoint
            .get()
            .and_then(Option::as_ref)
            .ok_or_else(|| SdkError::construction_failure("the endpoint is not known yet"))?;
        let credentials = self.credentials.get().await.map_err(|e| {
            SdkError::dispatch_failure(ConnectorError::other(
                format!("resolving credentials: {e}").into(),
                None,
            ))
        })?;
        let body = request_body(entries);
        let request = self
            .sign(endpoint, &credentials, body, SystemTime::now())
            .map_err(SdkError::construction_failure)?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| dispatch_io(e.into()))?;
            let (parts, body) = response.into_parts();
            let status = parts.status.as_u16();
            let body = match body.collect().await {
                Ok(body) => body.to_bytes(),
                // The service answered 2xx, so it took the request; only
                // the per-entry results were lost: an ambiguous outcome
                // (`retry::Retry::Ambiguous`), not a transport failure.
                Err(e) if (200..300).contains(&status) => {
                    return Err(SdkError::response_error(e, raw(status, Bytes::new())));
                }
                Err(e) => return Err(dispatch_io(e.into())),
            };
            Ok::<_, SdkError<PutEventsError, HttpResponse>>((
                parts.status.as_u16(),
                parts.headers,
                body,
            ))
        };
        let (status, headers, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                SdkError::timeout_error(format!(
                    "no answer within the request timeout ({})",
                    humantime::format_duration(self.timeout)
                ))
            })??;
        read_response(status, &headers, body)
    }

    /// The signed request (SigV4, `AWS4-HMAC-SHA256`).
    fn sign(
        &self,
        endpoint: &Endpoint,
        credentials: &Credentials,
        body: Vec<u8>,
        now: SystemTime,
    ) -> Result<Request<Full<Bytes>>, BoxError> {
        let (date, amz_date) = amz_dates(now)?;
        let token = credentials.session_token();
        let signed_headers = if token.is_some() {
            "content-type;host;x-amz-date;x-amz-security-token;x-amz-target"
        } else {
            "content-type;host;x-amz-date;x-amz-target"
        };
        let host = endpoint.host.to_str()?;
        // Built with push_str: this runs for every request.
        let mut canonical = String::with_capacity(512);
        for part in [
            "POST\n",
            &endpoint.path,
            "\n\ncontent-type:",
            JSON_1_1,
            "\nhost:",
            host,
            "\nx-amz-date:",
            &amz_date,
            "\n",
        ] {
            canonical.push_str(part);
        }
        if let Some(token) = token {
            canonical.push_str("x-amz-security-token:");
            canonical.push_str(token.trim());
            canonical.push('\n');
        }
        for part in [
            "x-amz-target:",
            TARGET,
            "\n\n",
            signed_headers,
            "\n",
            sha256_hex(&body).as_str(),
        ] {
            canonical.push_str(part);
        }
        let mut scope = String::with_capacity(64);
        for part in [&date, "/", &self.region, "/", SERVICE, "/aws4_request"] {
            scope.push_str(part);
        }
        let mut string_to_sign = String::with_capacity(160);
        for part in [
            "AWS4-HMAC-SHA256\n",
            &amz_date,
            "\n",
            &scope,
            "\n",
            sha256_hex(canonical.as_bytes()).as_str(),
        ] {
            string_to_sign.push_str(part);
        }
        let signature = {
            let mut cache = self.signing_key.lock().expect("signing key lock");
            let secret = credentials.secret_access_key();
            let stale = cache
                .as_ref()
                .is_none_or(|(d, s, _)| *d != date || s != secret);
            if stale {
                let key =
                    aws_sigv4::sign::v4::generate_signing_key(secret, now, &self.region, SERVICE);
                *cache = Some((date, secret.to_owned(), key.as_ref().to_vec()));
            }
            let (_, _, key) = cache.as_ref().expect("filled above");
            aws_sigv4::sign::v4::calculate_signature(key, string_to_sign.as_bytes())
        };
        let mut authorization = String::with_capacity(256);
        for part in [
            "AWS4-HMAC-SHA256 Credential=",
            credentials.access_key_id(),
            "/",
            &scope,
            ", SignedHeaders=",
            signed_headers,
            ", Signature=",
            &signature,
        ] {
            authorization.push_str(part);
        }
        let mut builder = Request::post(endpoint.uri.clone())
            .header(HOST, endpoint.host.clone())
            .header(CONTENT_TYPE, JSON_1_1)
            .header(X_AMZ_DATE, amz_date)
            .header(X_AMZ_TARGET, TARGET)
            .header(AUTHORIZATION, authorization)
            .header(USER_AGENT, self.user_agent.clone());
        if let Some(token) = token {
            builder = builder.header(X_AMZ_SECURITY_TOKEN, token.trim());
        }
        Ok(builder.body(Full::new(Bytes::from(body)))?)
    }
}

const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
const X_AMZ_TARGET: HeaderName = HeaderName::from_static("x-amz-target");
const X_AMZ_SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");

/// Lower-case hex SHA-256, without allocating per digit.
fn sha256_hex(data: &[u8]) -> HexDigest {
    let mut out = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(data), &mut out).expect("64 hex digits for 32 bytes");
    HexDigest(out)
}

struct HexDigest([u8; 64]);

impl HexDigest {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

/// A connection-level failure: retried like the SDK's.
fn dispatch_io(e: BoxError) -> SdkError<PutEventsError, HttpResponse> {
    SdkError::dispatch_failure(ConnectorError::io(e))
}

/// `(YYYYMMDD, YYYYMMDDTHHMMSSZ)` in UTC, as SigV4 wants them.
fn amz_dates(now: SystemTime) -> Result<(String, String), BoxError> {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970")?
        .as_secs();
    let (y, m, d) = crate::clock::civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    let date = format!("{y:04}{m:02}{d:02}");
    let full = format!("{date}T{:02}{:02}{:02}Z", t / 3600, t / 60 % 60, t % 60);
    Ok((date, full))
}

/// `Time` as the SDK writes it (Smithy epoch seconds: whole seconds, then
/// the nanoseconds without trailing zeros, if any).
fn epoch_seconds(out: &mut Vec<u8>, t: SystemTime) {
    let Ok(since) = t.duration_since(SystemTime::UNIX_EPOCH) else {
        // Before 1970: never a capture time, but written as the SDK would.
        let s = DateTime::from(t)
            .fmt(Format::EpochSeconds)
            .unwrap_or_else(|_| "0".to_owned());
        out.extend_from_slice(s.as_bytes());
        return;
    };
    push_digits(out, since.as_secs(), 1);
    let mut nanos = since.subsec_nanos();
    if nanos != 0 {
        let mut digits = 9;
        while nanos % 10 == 0 {
            nanos /= 10;
            digits -= 1;
        }
        out.push(b'.');
        push_digits(out, u64::from(nanos), digits);
    }
}

/// `v` in decimal, zero-padded to at least `width` digits.
fn push_digits(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    while v > 0 {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let start = i.min(buf.len() - width.min(buf.len()));
    out.extend_from_slice(&buf[start..]);
}

/// `{"Entries":[…]}`: the fields [`super::service::request_entry`] sets,
/// with `Time` in epoch seconds as the SDK writes it.
pub fn request_body(entries: &[Entry]) -> Vec<u8> {
    let size: usize = entries
        .iter()
        .map(|e| {
            96 + e.source.len()
                + e.detail_type.len()
                + e.event_bus_name.len()
                + e.detail.escaped().len()
        })
        .sum();
    let mut b = Vec::with_capacity(16 + size);
    b.extend_from_slice(b"{\"Entries\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(b"{\"Source\":");
        push_json_bytes(&mut b, &e.source);
        b.extend_from_slice(b",\"DetailType\":");
        push_json_bytes(&mut b, &e.detail_type);
        b.extend_from_slice(b",\"Detail\":\"");
        b.extend_from_slice(e.detail.escaped().as_bytes());
        b.push(b'"');
        b.extend_from_slice(b",\"Time\":");
        epoch_seconds(&mut b, e.time);
        b.extend_from_slice(b",\"EventBusName\":");
        push_json_bytes(&mut b, &e.event_bus_name);
        b.push(b'}');
    }
    b.extend_from_slice(b"]}");
    b
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Response<'a> {
    #[serde(default, borrow)]
    entries: Vec<ResultEntry<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ResultEntry<'a> {
    #[serde(default, borrow)]
    error_code: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    error_message: Option<std::borrow::Cow<'a, str>>,
}

/// An AWS JSON 1.1 error body.
#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(rename = "__type", alias = "code", default, borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(alias = "Message", alias = "errorMessage", default, borrow)]
    message: Option<std::borrow::Cow<'a, str>>,
}

fn raw(status: u16, body: Bytes) -> HttpResponse {
    HttpResponse::new(
        StatusCode::try_from(status).unwrap_or_else(|_| StatusCode::try_from(500).expect("500")),
        SdkBody::from(body),
    )
}

/// Reads a PutEvents answer the way the SDK does: a 2xx lists one result
/// per entry; anything else is an error whose code comes from the
/// `X-Amzn-Errortype` header or the body's `__type` (without its
/// namespace).
// The SDK's own error type, so that one classification serves both paths;
// errors are the rare case.
#[allow(clippy::result_large_err)]
fn read_response(status: u16, headers: &hyper::HeaderMap, body: Bytes) -> PutEventsResult {
    if (200..300).contains(&status) {
        return match serde_json::from_slice::<Response>(&body) {
            Ok(r) => Ok(r
                .entries
                .into_iter()
                .map(|e| match e.error_code {
                    None => EntryResult::Accepted,
                    Some(code) => EntryResult::Failed {
                        code: code.into_owned(),
                        message: e.error_message.unwrap_or_default().into_owned(),
                    },
                })
                .collect()),
            Err(e) => Err(SdkError::response_error(e, raw(status, body))),
        };
    }
    let parsed = serde_json::from_slice::<ErrorBody>(&body).ok();
    let header_code = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok());
    let code = header_code
        .or(parsed.as_ref().and_then(|p| p.kind.as_deref()))
        .map(sanitize_error_code);
    let mut meta = ErrorMetadata::builder();
    if let Some(code) = code {
        meta = meta.code(code);
    }
    if let Some(message) = parsed.as_ref().and_then(|p| p.message.as_deref()) {
        meta = meta.message(message);
    }
    debug!(status, code, "EventBridge: PutEvents refused");
    Err(SdkError::service_error(
        PutEventsError::generic(meta.build()),
        raw(status, body),
    ))
}

/// `aws.protocoltests#FooError:http://…` → `FooError` (the AWS JSON
/// protocols' rule).
fn sanitize_error_code(code: &str) -> &str {
    let code = code.split(':').next().unwrap_or(code);
    code.rsplit('#').next().unwrap_or(code)
}

/// Records the URL of a request the SDK sends (after its endpoint
/// resolution).
#[derive(Debug)]
pub struct RecordEndpoint(Arc<OnceLock<Option<Endpoint>>>);

impl Intercept for RecordEndpoint {
    fn name(&self) -> &'static str {
        "udp-agent::RecordEndpoint"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let url = context.request().uri();
        let endpoint = match Endpoint::parse(url) {
            // The SDK's HTTP client honours HTTP(S)_PROXY/ALL_PROXY and
            // NO_PROXY; this one does not, so a proxied endpoint stays
            // with the SDK.
            Some(endpoint) if Matcher::from_env().intercept(&endpoint.uri).is_some() => {
                info!(
                    url,
                    "EventBridge: requests go through the configured HTTP proxy, with the SDK's client"
                );
                None
            }
            Some(endpoint) => {
                debug!(url, "EventBridge: direct requests from now on");
                Some(endpoint)
            }
            None => {
                info!(
                    url,
                    "EventBridge: requests to this endpoint URL go through the SDK"
                );
                None
            }
        };
        let _ = self.0.set(endpoint);
        Ok(())
    }
}

/// The credentials of a provider chain, shared by every request.
///
/// Requests never wait for the provider while the current credentials are
/// valid: from [`REFRESH_BEFORE`] their expiry on, one background task asks
/// the provider for newer ones, and an answer that brings nothing newer (on
/// EC2, IMDS keeps serving the old role credentials for a while) or an
/// error is tried again after a capped, jittered backoff
/// ([`REFRESH_BACKOFF`]), never later than the expiry. Asking once per
/// request instead could make hundreds of IMDS calls a second, and IMDS
/// throttles per instance. Requests wait only when there are no valid
/// credentials at all (before the first answer, or once they have expired),
/// and then for the one attempt in progress.
struct CredentialCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    provider: SharedCredentialsProvider,
    current: RwLock<Option<Credentials>>,
    refresh: Mutex<Refresh>,
    /// Counts finished refresh attempts: requests without valid credentials
    /// wait for the next one.
    attempts: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Refresh {
    running: bool,
    /// Attempts in a row that brought no credentials valid beyond
    /// [`REFRESH_BEFORE`].
    misses: u32,
    /// No new attempt before this.
    not_before: Option<tokio::time::Instant>,
    /// Why the last attempt failed, if it did.
    last_error: Option<String>,
}

impl CredentialCache {
    fn new(provider: SharedCredentialsProvider) -> Self {
        Self {
            inner: Arc::new(CacheInner {
                provider,
                current: RwLock::new(None),
                refresh: Mutex::new(Refresh::default()),
                attempts: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    async fn get(&self) -> Result<Credentials, BoxError> {
        if let Some(c) = self.inner.current() {
            match c.expiry() {
                None => return Ok(c),
                Some(expiry) if expiry > SystemTime::now() + REFRESH_BEFORE => return Ok(c),
                Some(expiry) if expiry > SystemTime::now() => {
                    self.start_refresh();
                    return Ok(c);
                }
                Some(_) => {}
            }
        }
        // No valid credentials: wait for the attempt in progress (or one
        // started now), unless the backoff says not yet.
        let mut attempts = self.inner.attempts.subscribe();
        if self.start_refresh() {
            let _ = tokio::time::timeout(REFRESH_TIMEOUT, attempts.changed()).await;
        }
        match self.inner.current() {
            Some(c) if c.expiry().is_none_or(|e| e > SystemTime::now()) => Ok(c),
            _ => {
                let r = self.inner.refresh.lock().expect("refresh lock");
                let why = r.last_error.as_deref().unwrap_or("they have expired");
                Err(format!("no valid credentials: {why}").into())
            }
        }
    }

    /// Starts a background refresh unless one is running or the backoff
    /// holds it back; returns whether one is running now.
    fn start_refresh(&self) -> bool {
        let mut r = self.inner.refresh.lock().expect("refresh lock");
        if r.running {
            return true;
        }
        if r.not_before
            .is_some_and(|t| tokio::time::Instant::now() < t)
        {
            return false;
        }
        r.running = true;
        drop(r);
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.refresh().await });
        true
    }
}

impl CacheInner {
    fn current(&self) -> Option<Credentials> {
        self.current.read().expect("credentials lock").clone()
    }

    /// One attempt: asks the provider, keeps what it answers, and sets when
    /// the next attempt may start.
    async fn refresh(&self) {
        let answer = tokio::time::timeout(REFRESH_TIMEOUT, self.provider.provide_credentials())
            .await
            .map_err(|_| {
                format!(
                    "the credential provider gave no answer in {}",
                    humantime::format_duration(REFRESH_TIMEOUT)
                )
            })
            .and_then(|r| r.map_err(|e| crate::logging::error_chain(&e)));
        let now = SystemTime::now();
        let mut r = self.refresh.lock().expect("refresh lock");
        r.running = false;
        let renewed = match answer {
            Ok(c) => {
                let mut current = self.current.write().expect("credentials lock");
                let new = current.as_ref().is_none_or(|old| {
                    old.access_key_id() != c.access_key_id() || old.expiry() != c.expiry()
                });
                if new {
                    let expires = c
                        .expiry()
                        .and_then(|e| DateTime::from(e).fmt(Format::DateTime).ok());
                    info!(
                        expires = expires.as_deref().unwrap_or("never"),
                        "EventBridge: credentials for direct requests"
                    );
                }
                let renewed = c.expiry().is_none_or(|e| e > now + REFRESH_BEFORE);
                *current = Some(c);
                r.last_error = None;
                renewed
            }
            Err(e) => {
                r.last_error = Some(e);
                false
            }
        };
        if renewed {
            r.misses = 0;
            r.not_before = None;
        } else {
            let ceiling = REFRESH_BACKOFF.ceiling(r.misses);
            // Equal jitter: at least half the ceiling, so attempts stay
            // spaced out, and spread so that hosts started together do not
            // ask in step.
            let mut wait = ceiling / 2 + ceiling.mul_f64(fastrand::f64() / 2.0);
            r.misses = r.misses.saturating_add(1);
            // Not past the expiry of what is in use, so that new
            // credentials are picked up in time if they have appeared.
            if let Some(left) = self
                .current()
                .and_then(|c| c.expiry())
                .and_then(|e| e.duration_since(now).ok())
                .filter(|left| !left.is_zero())
            {
                wait = wait.min(left);
            }
            r.not_before = Some(tokio::time::Instant::now() + wait);
            match &r.last_error {
                Some(e) => warn!(
                    error = %e,
                    retry_in = %humantime::format_duration(wait),
                    "EventBridge: could not refresh credentials; the current ones are used until they expire"
                ),
                None => debug!(
                    retry_in = %humantime::format_duration(wait),
                    "EventBridge: the provider still has the credentials in use, which expire soon"
                ),
            }
        }
        drop(r);
        self.attempts.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::UNIX_EPOCH};

    use aws_sigv4::{
        http_request::{SignableBody, SignableRequest, SigningSettings, sign},
        sign::v4,
    };
    use aws_smithy_runtime_api::client::identity::Identity;

    use super::*;

    fn entry(detail: &str) -> Entry {
        Entry {
            source: Arc::from("udp.raw"),
            detail_type: Arc::from("UdpPacket"),
            event_bus_name: Arc::from("orders"),
            detail: detail.into(),
            time: UNIX_EPOCH + Duration::from_millis(1_795_822_397_250),
            capture_ns: 0,
        }
    }

    #[test]
    fn the_body_is_what_the_sdk_would_send() {
        let entries = [entry(r#"{"Payload":"aGk=","Port":514}"#), entry("{}")];
        let body: serde_json::Value = serde_json::from_slice(&request_body(&entries)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"Entries": [
                {"Source": "udp.raw", "DetailType": "UdpPacket",
                 "Detail": r#"{"Payload":"aGk=","Port":514}"#,
                 "Time": 1_795_822_397.25, "EventBusName": "orders"},
                {"Source": "udp.raw", "DetailType": "UdpPacket", "Detail": "{}",
                 "Time": 1_795_822_397.25, "EventBusName": "orders"},
            ]})
        );
    }

    #[test]
    fn strings_are_escaped_like_serde_json_does() {
        let mut cases: Vec<String> = (0u8..128)
            .map(|b| format!("ab{}cdefghijk", b as char))
            .collect();
        cases.extend(
            [
                "",
                "plain",
                r#"{"Destination":{"Address":"198.18.0.1","Port":514},"Payload":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","Interface":"eth0"}"#,
                "tab\there\\ and \u{1}\u{1f}\u{7f} é ü 漢字 🦀",
                "\"\"\"\"\"\"\"\"\"",
                "12345678\\",
            ]
            .map(str::to_owned),
        );
        // Every kind of escape at every offset in and across the 8-byte
        // chunks, alone and in runs.
        for offset in 0..20 {
            for c in [
                "\"", "\\", "\n", "\u{1}", "\u{1f}", "é", " ", "\"\\\"", "a\"b\nc",
            ] {
                cases.push(format!("{}{c}{}", "x".repeat(offset), "y".repeat(offset)));
                cases.push(c.repeat(offset + 1));
            }
        }
        for s in &cases {
            let mut ours = Vec::new();
            push_json_bytes(&mut ours, s);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(s).unwrap(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn times_are_written_like_the_sdk_writes_them() {
        for (secs, nanos) in [
            (0u64, 0u32),
            (1_795_822_397, 0),
            (1_795_822_397, 250_000_000),
            (1_795_822_397, 1),
            (1_795_822_397, 123_456_789),
            (1_795_822_397, 100),
            (4_102_444_800, 999_999_999),
        ] {
            let t = UNIX_EPOCH + Duration::new(secs, nanos);
            let mut ours = Vec::new();
            epoch_seconds(&mut ours, t);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                DateTime::from(t).fmt(Format::EpochSeconds).unwrap()
            );
        }
    }

    #[test]
    fn sigv4_dates_agree_with_the_sdk_calendar() {
        // Every day from 1970 to 2200, leap years and centuries included.
        for day in 0..84_000u64 {
            let secs = day * 86_400 + 3_723;
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            let iso = DateTime::from(t).fmt(Format::DateTime).unwrap();
            let compact: String = iso.chars().filter(|c| *c != '-' && *c != ':').collect();
            let (d, full) = amz_dates(t).unwrap();
            assert_eq!(
                (d.as_str(), full.as_str()),
                (&compact[..8], compact.as_str())
            );
        }
    }

    #[test]
    fn dates_are_sigv4_dates() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_822_397_250);
        let (d, full) = amz_dates(t).unwrap();
        // `date -u -d @1795822397 +%Y%m%dT%H%M%SZ`
        assert_eq!(d, "20261127");
        assert_eq!(full, "20261127T233317Z");
    }

    /// The signature matches the one aws-sigv4 (the SDK's signer) computes
    /// for the same request, with and without a session token.
    #[tokio::test]
    async fn signatures_match_the_sdk_signer() {
        for token in [None, Some("FwoGZXIvYXdzEXAMPLETOKEN")] {
            let creds = Credentials::new(
                "AKIDEXAMPLE",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                token.map(str::to_owned),
                None,
                "test",
            );
            let sdk = aws_config::SdkConfig::builder()
                .region(aws_config::Region::new("eu-west-3"))
                .credentials_provider(SharedCredentialsProvider::new(creds.clone()))
                .behavior_version(aws_config::BehaviorVersion::latest())
                .build();
            let connection = Connection {
                client: aws_sdk_eventbridge::Client::new(&sdk),
                credentials: sdk.credentials_provider(),
            };
            let direct = Direct::new(
                &connection,
                Duration::from_secs(1),
                Duration::from_secs(1),
                1,
            )
            .unwrap();
            let endpoint = Endpoint::parse("https://events.eu-west-3.amazonaws.com").unwrap();
            let now = UNIX_EPOCH + Duration::from_secs(1_795_822_397);
            let body = request_body(&[entry("{}")]);
            let ours = direct.sign(&endpoint, &creds, body.clone(), now).unwrap();
            // Twice: the second one uses the cached signing key.
            let again = direct.sign(&endpoint, &creds, body.clone(), now).unwrap();
            assert_eq!(
                ours.headers()[AUTHORIZATION],
                again.headers()[AUTHORIZATION]
            );

            let headers: Vec<(&str, &str)> = ours
                .headers()
                .iter()
                .filter(|(k, _)| *k != AUTHORIZATION && *k != USER_AGENT)
                .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
                .collect();
            let identity = Identity::from(creds.clone());
            let params = v4::SigningParams::builder()
                .identity(&identity)
                .region("eu-west-3")
                .name("events")
                .time(now)
                .settings(SigningSettings::default())
                .build()
                .unwrap()
                .into();
            let signable = SignableRequest::new(
                "POST",
                "https://events.eu-west-3.amazonaws.com/",
                headers.into_iter(),
                SignableBody::Bytes(&body),
            )
            .unwrap();
            let (instructions, signature) = sign(signable, &params).unwrap().into_parts();
            let theirs = instructions
                .headers()
                .find(|(k, _)| *k == "authorization")
                .map(|(_, v)| v.to_owned())
                .unwrap();
            assert!(theirs.ends_with(&signature));
            assert_eq!(
                ours.headers()[AUTHORIZATION].to_str().unwrap(),
                theirs,
                "token {token:?}"
            );
        }
    }

    #[test]
    fn answers_are_read_like_the_sdk_reads_them() {
        let ok = br#"{"FailedEntryCount":1,"Entries":[{"EventId":"e-1"},{"ErrorCode":"ThrottlingException","ErrorMessage":"slow down"}]}"#;
        let r = read_response(200, &hyper::HeaderMap::new(), Bytes::from_static(ok)).unwrap();
        assert_eq!(
            r,
            [
                EntryResult::Accepted,
                EntryResult::Failed {
                    code: "ThrottlingException".into(),
                    message: "slow down".into()
                }
            ]
        );
        use aws_sdk_eventbridge::error::ProvideErrorMetadata;
        let err = read_response(
            400,
            &hyper::HeaderMap::new(),
            Bytes::from_static(br#"{"__type":"com.amazonaws.events#ThrottlingException","message":"Rate exceeded"}"#),
        )
        .unwrap_err();
        let SdkError::ServiceError(s) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(s.err().code(), Some("ThrottlingException"));
        assert_eq!(s.err().message(), Some("Rate exceeded"));
        assert_eq!(s.raw().status().as_u16(), 400);
        let mut headers = hyper::HeaderMap::new();
        headers.insert(
            "x-amzn-errortype",
            HeaderValue::from_static("InternalFailure:http://internal.amazon.com/"),
        );
        let err = read_response(500, &headers, Bytes::from_static(b"oops")).unwrap_err();
        let SdkError::ServiceError(s) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(s.err().code(), Some("InternalFailure"));
        let err = read_response(200, &headers, Bytes::from_static(b"<html>")).unwrap_err();
        assert!(matches!(err, SdkError::ResponseError(_)), "{err:?}");
    }

    /// A provider that answers what the test puts in `answer`, counting
    /// the calls.
    #[derive(Debug, Default)]
    struct Scripted {
        calls: std::sync::atomic::AtomicUsize,
        answer: Mutex<Option<Credentials>>,
    }

    #[derive(Debug)]
    struct ScriptedProvider(Arc<Scripted>);

    impl ProvideCredentials for ScriptedProvider {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            self.0
                .calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let answer = self.0.answer.lock().unwrap().clone().ok_or_else(|| {
                aws_credential_types::provider::error::CredentialsError::provider_error(
                    "scripted failure",
                )
            });
            aws_credential_types::provider::future::ProvideCredentials::ready(answer)
        }
    }

    fn expiring(key: &str, in_secs: i64) -> Credentials {
        let now = SystemTime::now();
        let expiry = if in_secs >= 0 {
            now + Duration::from_secs(in_secs as u64)
        } else {
            now - Duration::from_secs(in_secs.unsigned_abs())
        };
        Credentials::new(key, "secret", Some("token".into()), Some(expiry), "test")
    }

    fn scripted(answer: Option<Credentials>) -> (Arc<Scripted>, CredentialCache) {
        let script = Arc::new(Scripted::default());
        *script.answer.lock().unwrap() = answer;
        let cache = CredentialCache::new(SharedCredentialsProvider::new(ScriptedProvider(
            script.clone(),
        )));
        (script, cache)
    }

    fn calls(s: &Scripted) -> usize {
        s.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lets spawned refresh tasks run (time is paused: sleeping 1 ms
    /// completes once every task is idle).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    /// Credentials inside the refresh window that the provider keeps
    /// serving (IMDS before it rotates them): requests go on signing with
    /// them, and the provider is asked on a backoff, not per request.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn credentials_near_expiry_are_refreshed_in_the_background_with_backoff() {
        let (script, cache) = scripted(Some(expiring("AKIDOLD", 240)));
        // Five simulated minutes of 1,000 requests a second.
        for _second in 0..300 {
            for _ in 0..1000 {
                let c = cache.get().await.unwrap();
                assert_eq!(c.access_key_id(), "AKIDOLD");
            }
            tokio::time::advance(Duration::from_secs(1)).await;
            settle().await;
        }
        // Backoff 2 s doubling to 60 s, at least half of each wait: the
        // first answer, then at most 2, 4, 8, 16, 32, 60, 60, 60, 60 s
        // apart in the worst case (and no later than the expiry).
        let n = calls(&script);
        println!("{n} provider calls in 300 simulated seconds of 1,000 requests/s");
        assert!((6..=16).contains(&n), "{n} provider calls in 300 s");

        // New credentials appear: the next attempt (within 60 s) takes them.
        *script.answer.lock().unwrap() = Some(expiring("AKIDNEW", 3600));
        let mut seconds = 0;
        while cache.get().await.unwrap().access_key_id() != "AKIDNEW" {
            tokio::time::advance(Duration::from_secs(1)).await;
            settle().await;
            seconds += 1;
            assert!(seconds <= 61, "new credentials unused after {seconds} s");
        }
        // Valid beyond the window: no more calls.
        let n = calls(&script);
        for _ in 0..600 {
            cache.get().await.unwrap();
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        settle().await;
        assert_eq!(calls(&script), n);
    }

    /// Requests with no valid credentials wait for one attempt; while the
    /// provider fails, they fail fast between attempts rather than each
    /// asking again.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn without_valid_credentials_requests_share_one_attempt() {
        let (script, cache) = scripted(None);
        let err = cache.get().await.unwrap_err().to_string();
        assert!(err.contains("scripted failure"), "{err}");
        for _ in 0..100 {
            assert!(cache.get().await.is_err());
        }
        assert_eq!(calls(&script), 1);
        // Expired credentials are no better.
        *script.answer.lock().unwrap() = Some(expiring("AKIDGONE", -1));
        tokio::time::advance(Duration::from_secs(2)).await;
        let err = cache.get().await.unwrap_err().to_string();
        assert!(err.contains("expired"), "{err}");
        assert_eq!(calls(&script), 2);
        // Once the provider answers, the next attempt serves everyone.
        *script.answer.lock().unwrap() = Some(expiring("AKIDOK", 3600));
        tokio::time::advance(Duration::from_secs(4)).await;
        let cache = Arc::new(cache);
        let waiting: Vec<_> = (0..32)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get().await.map_err(|e| e.to_string()) })
            })
            .collect();
        for w in waiting {
            assert_eq!(w.await.unwrap().unwrap().access_key_id(), "AKIDOK");
        }
        assert_eq!(calls(&script), 3);
    }

    #[test]
    fn endpoints_with_odd_paths_stay_with_the_sdk() {
        assert_eq!(Endpoint::parse("http://127.0.0.1:4010").unwrap().path, "/");
        assert_eq!(
            Endpoint::parse("https://events.us-east-1.amazonaws.com/")
                .unwrap()
                .host,
            "events.us-east-1.amazonaws.com"
        );
        assert_eq!(Endpoint::parse("http://h/a/b").unwrap().path, "/a/b");
        assert!(Endpoint::parse("http://h/a%20b").is_none());
        assert!(Endpoint::parse("http://h/?x=1").is_none());
    }
}
