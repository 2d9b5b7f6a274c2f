//! Writing a cache hit to the client, and the cache headers of other responses.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::entry::CachedEntry;
use super::policy::{CACHE_HEADER, SIMILARITY_HEADER};
use super::replay::{json_body, stream_events};
use super::state::{CacheState, CacheStatus};
use crate::proxy::respond::{add_headers, request_id_value, REQUEST_ID_HEADER};

/// Adds `x-watchllm-cache` (and the similarity of a semantic hit) to a response header.
pub fn annotate(header: &mut ResponseHeader, state: &CacheState) {
    if state.status == CacheStatus::None {
        return;
    }
    header.insert_static_header(&CACHE_HEADER, HeaderValue::from_static(state.status.name()));
    if let Some(similarity) = state.hit.and_then(|h| h.similarity) {
        let value = HeaderValue::try_from(format!("{similarity:.4}")).expect("a formatted number is a valid header value");
        header.insert_static_header(&SIMILARITY_HEADER, value);
    }
}

/// Sends a hit: as a JSON body, or as an SSE stream of several chunk events when `stream` is set.
pub async fn send_hit(
    session: &mut Session,
    request_id: &str,
    entry: &CachedEntry,
    state: &CacheState,
    stream: bool,
    include_usage: bool,
    extra: &[(&'static HeaderName, HeaderValue)],
) -> Result<()> {
    if !stream {
        let body = json_body(entry);
        let mut header = ResponseHeader::build(200, Some(6 + extra.len()))?;
        add_headers(&mut header, extra);
        header.insert_header("content-type", "application/json")?;
        header.insert_header("content-length", body.len().to_string())?;
        header.insert_static_header(&REQUEST_ID_HEADER, request_id_value(request_id)?);
        annotate(&mut header, state);
        session.write_response_header(Box::new(header), false).await?;
        return session.write_response_body(Some(Bytes::from(body)), true).await;
    }

    let events = stream_events(entry, include_usage);
    let mut header = ResponseHeader::build(200, Some(6 + extra.len()))?;
    add_headers(&mut header, extra);
    header.insert_header("content-type", "text/event-stream")?;
    header.insert_header("cache-control", "no-cache")?;
    header.insert_header("transfer-encoding", "chunked")?;
    header.insert_static_header(&REQUEST_ID_HEADER, request_id_value(request_id)?);
    annotate(&mut header, state);
    session.write_response_header(Box::new(header), false).await?;
    let last = events.len().saturating_sub(1);
    for (i, event) in events.into_iter().enumerate() {
        session.write_response_body(Some(Bytes::from(event)), i == last).await?;
    }
    Ok(())
}
