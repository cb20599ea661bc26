//! A fault-injecting HTTP proxy: one request per connection, each handled by the next step of a
//! script, then plain forwarding.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with one request.
#[derive(Debug, Clone)]
pub enum Step {
    /// Pass it to the server and its answer back.
    Forward,
    /// Pass it to the server, read the answer (the rows are committed), then hang up.
    DropAnswer,
    /// Answer with this status and `Retry-After` without asking the server.
    Status(u16, u32),
    /// Answer with this status and body (`text/html`) without asking the server: something
    /// that is not a Backfill server.
    Foreign(u16, &'static str),
    /// Pass it to the server and its answer back with this `backfill-max-event-age` value
    /// instead of the server's: a proxy or a server that says a window the contract never
    /// sends.
    Window(&'static str),
    /// Answer with this status and a body of this many spaces (`Content-Length` says so),
    /// written until the client stops reading: a proxy's endless page. The bytes it managed to
    /// write are counted in [`Proxy::padding_written`].
    Padded(u16, usize),
    /// Read the request and never answer.
    Stall,
    /// Read part of the request and hang up.
    CloseMidRequest,
}

/// A running proxy.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    script: Arc<Mutex<VecDeque<Step>>>,
    padding: Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    /// Starts a proxy to `upstream` on `runtime`, following `script` and then forwarding.
    pub fn start(
        runtime: &tokio::runtime::Runtime,
        upstream: SocketAddr,
        script: Vec<Step>,
    ) -> Self {
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let steps = Arc::clone(&script);
        let padding = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let written = Arc::clone(&padding);
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let step = steps
                    .lock()
                    .ok()
                    .and_then(|mut s| s.pop_front())
                    .unwrap_or(Step::Forward);
                tokio::spawn(handle(client, upstream, step, Arc::clone(&written)));
            }
        });
        Self {
            addr,
            script,
            padding,
        }
    }

    /// Bytes of [`Step::Padded`] bodies the clients took before they stopped reading.
    pub fn padding_written(&self) -> usize {
        self.padding.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Steps not yet used.
    pub fn remaining(&self) -> usize {
        self.script.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// Reads one HTTP/1.1 message (headers and a `Content-Length` body).
async fn read_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(buf);
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Makes the message ask for the connection to close, so each connection carries one request.
fn with_close(message: Vec<u8>) -> Vec<u8> {
    let Some(end) = message.windows(2).position(|w| w == b"\r\n") else {
        return message;
    };
    let mut out = message[..end + 2].to_vec();
    out.extend_from_slice(b"connection: close\r\n");
    out.extend_from_slice(&message[end + 2..]);
    out
}

/// The answer with its `backfill-max-event-age` header's value replaced by `value`.
fn with_window(answer: Vec<u8>, value: &str) -> Vec<u8> {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return answer;
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    let head: Vec<String> = head
        .split("\r\n")
        .map(|line| {
            if line
                .to_ascii_lowercase()
                .starts_with("backfill-max-event-age:")
            {
                format!("backfill-max-event-age: {value}")
            } else {
                line.to_owned()
            }
        })
        .collect();
    let mut out = head.join("\r\n").into_bytes();
    out.extend_from_slice(&answer[end..]);
    out
}

async fn exchange(upstream: SocketAddr, request: Vec<u8>) -> Option<Vec<u8>> {
    let mut server = TcpStream::connect(upstream).await.ok()?;
    server.write_all(&with_close(request)).await.ok()?;
    read_message(&mut server).await
}

async fn handle(
    mut client: TcpStream,
    upstream: SocketAddr,
    step: Step,
    padding: Arc<std::sync::atomic::AtomicUsize>,
) {
    if let Step::CloseMidRequest = step {
        let mut part = [0u8; 64];
        let _ = client.read(&mut part).await;
        return;
    }
    let Some(request) = read_message(&mut client).await else {
        return;
    };
    match step {
        Step::Forward => {
            if let Some(answer) = exchange(upstream, request).await {
                let _ = client.write_all(&with_close(answer)).await;
            }
        }
        Step::DropAnswer => {
            let _ = exchange(upstream, request).await;
        }
        Step::Window(value) => {
            if let Some(answer) = exchange(upstream, request).await {
                let _ = client
                    .write_all(&with_close(with_window(answer, value)))
                    .await;
            }
        }
        Step::Status(code, retry_after) => {
            let body = format!(
                r#"{{"status":{code},"error":"injected","message":"injected by the proxy"}}"#
            );
            let answer = format!(
                "HTTP/1.1 {code} Injected\r\ncontent-type: application/json\r\nretry-after: {retry_after}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(answer.as_bytes()).await;
        }
        Step::Foreign(code, body) => {
            let answer = format!(
                "HTTP/1.1 {code} Foreign\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(answer.as_bytes()).await;
        }
        Step::Padded(code, len) => {
            let head = format!(
                "HTTP/1.1 {code} Padded\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
            );
            if client.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let spaces = vec![b' '; 64 * 1024];
            let mut left = len;
            while left > 0 {
                let n = left.min(spaces.len());
                if client.write_all(&spaces[..n]).await.is_err() {
                    break;
                }
                left -= n;
                padding.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            }
        }
        Step::Stall => tokio::time::sleep(Duration::from_secs(30)).await,
        Step::CloseMidRequest => {}
    }
}
