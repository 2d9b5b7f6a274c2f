//! A minimal HTTP/1.1 client for the mock's tests, over a plain TCP connection to 127.0.0.1.
//!
//! It decodes chunked bodies itself, so a test can see whether a stream ended with the
//! terminating chunk or was cut.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{serve, MockOptions};

/// Starts a mock on an ephemeral loopback port and returns its address.
pub(crate) async fn start_mock(options: MockOptions) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let address = listener.local_addr().expect("local address");
    tokio::spawn(serve(listener, options));
    address
}

/// A response read to the end of the connection.
#[derive(Debug)]
pub(crate) struct RawResponse {
    pub status: u16,
    /// Header names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when the response used chunked encoding.
    pub body: Vec<u8>,
    /// False when a chunked body ended before its terminating zero-length chunk.
    pub complete: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("body is UTF-8")
    }

    /// Splits an event-stream body into its events, without the blank-line separators.
    pub fn events(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Parses every `data:` event except `[DONE]` and invalid JSON.
    pub fn data_chunks(&self) -> Vec<Value> {
        self.events()
            .iter()
            .filter_map(|event| event.strip_prefix("data: "))
            .filter_map(|data| serde_json::from_str(data).ok())
            .collect()
    }
}

/// Sends one request with `Connection: close` and reads the response until the server closes
/// the connection or resets it.
pub(crate) async fn send(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut stream = TcpStream::connect(address)
        .await
        .expect("connect to the mock");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    if method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // A server that rejects a request early, such as a 413 for an oversized body, may close the
    // connection before the client finishes writing, so a failed write still reads the response.
    let written = stream.write_all(head.as_bytes()).await;
    if written.is_ok() {
        let _ = stream.write_all(body).await;
    }

    let mut raw = Vec::new();
    let mut buffer = [0_u8; 64 * 1024];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => raw.extend_from_slice(&buffer[..read]),
        }
    }
    parse_response(&raw)
}

/// Sends `POST path` with a JSON body.
pub(crate) async fn post_json(
    address: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> RawResponse {
    let mut all_headers = vec![("Content-Type", "application/json")];
    all_headers.extend_from_slice(headers);
    send(
        address,
        "POST",
        path,
        &all_headers,
        body.to_string().as_bytes(),
    )
    .await
}

pub(crate) async fn get(address: SocketAddr, path: &str) -> RawResponse {
    send(address, "GET", path, &[], b"").await
}

fn parse_response(raw: &[u8]) -> RawResponse {
    let head_end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let rest = &raw[head_end + 4..];

    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("invalid status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();

    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked"));
    let (body, complete) = if chunked {
        decode_chunked(rest)
    } else {
        (rest.to_vec(), true)
    };
    RawResponse {
        status,
        headers,
        body,
        complete,
    }
}

/// Decodes a chunked body, returning the data and whether the zero-length chunk arrived.
fn decode_chunked(mut input: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = input.windows(2).position(|window| window == b"\r\n") else {
            return (body, false);
        };
        let size_text = String::from_utf8_lossy(&input[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim().to_owned();
        let Ok(size) = usize::from_str_radix(&size_text, 16) else {
            return (body, false);
        };
        input = &input[line_end + 2..];
        if size == 0 {
            return (body, true);
        }
        if input.len() < size + 2 {
            body.extend_from_slice(&input[..size.min(input.len())]);
            return (body, false);
        }
        body.extend_from_slice(&input[..size]);
        input = &input[size + 2..];
    }
}
