//! The Rust client library: VBP over TCP, pipelined.
//!
//! One [`Client`] holds one connection (to the first endpoint that answers) and may have many
//! requests in flight on it, from one thread ([`Client::send`] then [`Pending::wait`]) or many
//! (the client is `Send + Sync`). A reader thread decodes responses with the same
//! [`StreamDecoder`](crate::stream::StreamDecoder) the server uses and hands each to its
//! waiting request by request id, so responses may come back in any order.
//!
//! Every wait is bounded: connects by `connect_timeout` per endpoint, requests by
//! `request_timeout`, and in-flight requests by `inflight_max`. When the connection fails,
//! every waiting request gets [`ClientError::ConnectionLost`] and the next request connects
//! again, trying the endpoints in order.

use crate::codec::{Request, Response};
use crate::header::{Opcode, FLAG_FAN_OUT, FRAME_SIZE_MAX_BYTES_DEFAULT};
use crate::message::*;
use crate::pool::{BufferPool, PoolConfig, SizeClass, BUFFER_ALIGN};
use crate::stream::{StreamDecoder, StreamError};
use crate::validator::{FrameError, LayoutValidator};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Client settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// Per endpoint. Default 2 s.
    pub connect_timeout: Duration,
    /// From send to response. Default 10 s.
    pub request_timeout: Duration,
    /// Requests in flight on the connection at most; more wait (up to the request timeout).
    /// Default 256.
    pub inflight_max: usize,
    /// Largest response frame accepted. Default 16 MiB.
    pub frame_size_max_bytes: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            inflight_max: 256,
            frame_size_max_bytes: FRAME_SIZE_MAX_BYTES_DEFAULT,
        }
    }
}

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No endpoint accepted a connection.
    #[error("cannot connect to {endpoints}: {last_error}. Is the VORTEX dataplane running and listening there? Compare with [network] in its config")]
    Connect {
        /// The endpoints tried.
        endpoints: String,
        /// The last endpoint's error.
        last_error: io::Error,
    },
    /// An endpoint did not resolve.
    #[error("cannot resolve endpoint `{endpoint}`: {source}")]
    Resolve {
        /// The endpoint as given.
        endpoint: String,
        /// Why.
        source: io::Error,
    },
    /// No response within the request timeout.
    #[error("request {request_id} timed out after {after:?}")]
    Timeout {
        /// The request.
        request_id: u64,
        /// The timeout.
        after: Duration,
    },
    /// The connection failed while the request was in flight (it may have been applied).
    #[error("connection to {endpoint} lost: {reason}")]
    ConnectionLost {
        /// Server address.
        endpoint: SocketAddr,
        /// What happened.
        reason: String,
    },
    /// Sending failed.
    #[error("I/O error talking to {endpoint}: {source}")]
    Io {
        /// Server address.
        endpoint: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The server answered with an error.
    #[error("server error {code}: {message}")]
    Server {
        /// The code, if this client knows it.
        code: ServerCode,
        /// The server's message.
        message: String,
    },
    /// The server is overloaded.
    #[error("server throttled the request ({reason}); retry after {retry_after:?}")]
    Throttled {
        /// Suggested wait.
        retry_after: Duration,
        /// What is saturated.
        reason: String,
    },
    /// A write whose points live on several LEUs was applied on some and failed on others
    /// (docs/VBP.md, `Partial`): the ids not in `failed_ids` are written (or deleted) and
    /// durable; those in it were not, unless `cause` is an `Internal` server error.
    #[error("applied in part ({applied} applied, {} ids failed): {cause}", failed_ids.len())]
    Partial {
        /// What the parts that succeeded did (points upserted, or deleted that existed).
        applied: u32,
        /// The ids of the parts that failed, each once, in request order.
        failed_ids: Vec<u64>,
        /// Why they failed: [`ClientError::Throttled`] or [`ClientError::Server`].
        cause: Box<ClientError>,
    },
    /// A response of the wrong kind for the request.
    #[error("expected a {expected:?} response, got {got:?}")]
    UnexpectedResponse {
        /// Request opcode.
        expected: Opcode,
        /// Response opcode.
        got: Opcode,
    },
    /// The request could not be encoded.
    #[error(transparent)]
    Encode(#[from] crate::codec::EncodeError),
    /// The client was given no endpoint.
    #[error("no endpoint given")]
    NoEndpoint,
    /// A shard-aware client could not learn the LEU map.
    #[error("cannot learn the LEU map: {0}")]
    NoMap(String),
}

impl ClientError {
    /// How long to wait before sending the request again, when the server (or, for a
    /// [`ClientError::Partial`] answer, the part that failed) was THROTTLED.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Throttled { retry_after, .. } => Some(*retry_after),
            ClientError::Partial { cause, .. } => cause.retry_after(),
            _ => None,
        }
    }

    /// The error a `Partial` answer stands for.
    pub fn partial(body: crate::message::PartialBody) -> ClientError {
        let cause = if body.throttled {
            ClientError::Throttled {
                retry_after: Duration::from_millis(u64::from(body.retry_after_ms)),
                reason: body.message,
            }
        } else {
            ClientError::Server {
                code: ErrorCode::from_u16(body.code)
                    .map_or(ServerCode::Unknown(body.code), ServerCode::Known),
                message: body.message,
            }
        };
        ClientError::Partial {
            applied: body.applied,
            failed_ids: body.failed_ids,
            cause: Box::new(cause),
        }
    }
}

/// A server error code: known, or a number from a newer server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCode {
    /// A code this client knows.
    Known(ErrorCode),
    /// A code it does not.
    Unknown(u16),
}

impl std::fmt::Display for ServerCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerCode::Known(code) => write!(f, "{code:?}"),
            ServerCode::Unknown(code) => write!(f, "#{code}"),
        }
    }
}

type Reply = Result<Response, ClientError>;

struct Connection {
    endpoint: SocketAddr,
    writer: Mutex<TcpStream>,
    pending: Mutex<HashMap<u64, SyncSender<Reply>>>,
    slots_free: Condvar,
    closed: AtomicBool,
}

impl Connection {
    fn pending(&self) -> MutexGuard<'_, HashMap<u64, SyncSender<Reply>>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fails every waiting request and marks the connection dead.
    fn fail(&self, reason: &str) {
        self.closed.store(true, Ordering::Release);
        let waiting: Vec<_> = self.pending().drain().collect();
        for (_, reply) in waiting {
            let _ = reply.try_send(Err(ClientError::ConnectionLost {
                endpoint: self.endpoint,
                reason: reason.to_owned(),
            }));
        }
        self.slots_free.notify_all();
        if let Ok(writer) = self.writer.lock() {
            let _ = writer.shutdown(Shutdown::Both);
        }
    }
}

/// A connection to a VORTEX dataplane.
pub struct Client {
    endpoints: Vec<SocketAddr>,
    options: ClientOptions,
    connection: Mutex<Option<Arc<Connection>>>,
    next_request_id: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A request in flight.
#[derive(Debug)]
pub struct Pending {
    request_id: u64,
    opcode: Opcode,
    reply: Receiver<Reply>,
    connection: Arc<Connection>,
    deadline: Instant,
    timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// The request id.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Waits for the response; server errors and THROTTLED come back as errors.
    pub fn wait(self) -> Result<Response, ClientError> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let reply = match self.reply.recv_timeout(remaining) {
            Ok(reply) => reply,
            Err(RecvTimeoutError::Timeout) => {
                self.connection.pending().remove(&self.request_id);
                self.connection.slots_free.notify_one();
                return Err(ClientError::Timeout {
                    request_id: self.request_id,
                    after: self.timeout,
                });
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(ClientError::ConnectionLost {
                    endpoint: self.connection.endpoint,
                    reason: "the reader stopped".to_owned(),
                })
            }
        };
        match reply? {
            Response::Error(body) => Err(ClientError::Server {
                code: ErrorCode::from_u16(body.code)
                    .map_or(ServerCode::Unknown(body.code), ServerCode::Known),
                message: body.message,
            }),
            Response::Throttled(body) => Err(ClientError::Throttled {
                retry_after: Duration::from_millis(u64::from(body.retry_after_ms)),
                reason: body.reason,
            }),
            Response::Partial(body) => Err(ClientError::partial(body)),
            response if response.opcode() == self.opcode => Ok(response),
            response => Err(ClientError::UnexpectedResponse {
                expected: self.opcode,
                got: response.opcode(),
            }),
        }
    }
}

impl Client {
    /// Connects to the first of `endpoints` (`host:port`) that accepts.
    pub fn connect<A: AsRef<str>>(
        endpoints: &[A],
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let mut resolved = Vec::new();
        for endpoint in endpoints {
            let endpoint = endpoint.as_ref();
            let addresses = endpoint
                .to_socket_addrs()
                .map_err(|source| ClientError::Resolve {
                    endpoint: endpoint.to_owned(),
                    source,
                })?;
            resolved.extend(addresses);
        }
        if resolved.is_empty() {
            return Err(ClientError::NoEndpoint);
        }
        let client = Client {
            endpoints: resolved,
            options,
            connection: Mutex::new(None),
            next_request_id: AtomicU64::new(1),
        };
        client.connection()?;
        Ok(client)
    }

    /// The endpoint currently connected, if any.
    pub fn connected_endpoint(&self) -> Option<SocketAddr> {
        let connection = self.connection.lock().ok()?;
        connection
            .as_ref()
            .filter(|connection| !connection.closed.load(Ordering::Acquire))
            .map(|connection| connection.endpoint)
    }

    fn connection(&self) -> Result<Arc<Connection>, ClientError> {
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(connection) = slot.as_ref() {
            if !connection.closed.load(Ordering::Acquire) {
                return Ok(Arc::clone(connection));
            }
        }
        let mut last_error = io::Error::other("not tried");
        for endpoint in &self.endpoints {
            match TcpStream::connect_timeout(endpoint, self.options.connect_timeout) {
                Ok(stream) => {
                    let connection =
                        self.start(stream, *endpoint)
                            .map_err(|source| ClientError::Io {
                                endpoint: *endpoint,
                                source,
                            })?;
                    *slot = Some(Arc::clone(&connection));
                    return Ok(connection);
                }
                Err(error) => last_error = error,
            }
        }
        Err(ClientError::Connect {
            endpoints: self
                .endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            last_error,
        })
    }

    fn start(&self, stream: TcpStream, endpoint: SocketAddr) -> io::Result<Arc<Connection>> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(self.options.request_timeout))?;
        let reader = stream.try_clone()?;
        let connection = Arc::new(Connection {
            endpoint,
            writer: Mutex::new(stream),
            pending: Mutex::new(HashMap::with_capacity(self.options.inflight_max)),
            slots_free: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        let for_reader = Arc::clone(&connection);
        let frame_size_max_bytes = self.options.frame_size_max_bytes;
        std::thread::Builder::new()
            .name(format!("vbp-reader-{endpoint}"))
            .spawn(move || read_responses(reader, &for_reader, frame_size_max_bytes))?;
        Ok(connection)
    }

    /// Sends `request` and returns at once; [`Pending::wait`] gets the response.
    pub fn send(&self, request: &Request) -> Result<Pending, ClientError> {
        self.send_flagged(request, 0)
    }

    /// [`send`](Self::send) with header flags (see [`Request::encode_flagged`]).
    pub fn send_flagged(&self, request: &Request, flags: u16) -> Result<Pending, ClientError> {
        let connection = self.connection()?;
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let frame = request.encode_flagged(request_id, flags)?;
        let deadline = Instant::now() + self.options.request_timeout;
        let (reply_sender, reply) = mpsc::sync_channel(1);
        {
            let mut pending = connection.pending();
            while pending.len() >= self.options.inflight_max {
                if connection.closed.load(Ordering::Acquire) {
                    break;
                }
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(ClientError::Timeout {
                        request_id,
                        after: self.options.request_timeout,
                    });
                }
                pending = connection
                    .slots_free
                    .wait_timeout(pending, remaining)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
            }
            if connection.closed.load(Ordering::Acquire) {
                return Err(ClientError::ConnectionLost {
                    endpoint: connection.endpoint,
                    reason: "closed before sending".to_owned(),
                });
            }
            pending.insert(request_id, reply_sender);
        }
        let written = connection
            .writer
            .lock()
            .map_err(|_| io::Error::other("writer lock poisoned"))
            .and_then(|mut writer| writer.write_all(&frame));
        if let Err(source) = written {
            connection.fail(&format!("write failed: {source}"));
            return Err(ClientError::Io {
                endpoint: connection.endpoint,
                source,
            });
        }
        Ok(Pending {
            request_id,
            opcode: request.opcode(),
            reply,
            connection,
            deadline,
            timeout: self.options.request_timeout,
        })
    }

    /// Sends and waits.
    pub fn call(&self, request: &Request) -> Result<Response, ClientError> {
        self.send(request)?.wait()
    }

    /// Round trip; returns the nonce echoed.
    pub fn ping(&self) -> Result<u64, ClientError> {
        let nonce = self.next_request_id.load(Ordering::Relaxed) ^ 0x5652_5458;
        match self.call(&Request::Ping(Ping { nonce }))? {
            Response::Pong(pong) => Ok(pong.nonce),
            other => Err(unexpected(Opcode::Ping, &other)),
        }
    }

    /// Creates a collection.
    pub fn create_collection(&self, spec: CollectionSpec) -> Result<(), ClientError> {
        self.call(&Request::CreateCollection(spec)).map(drop)
    }

    /// Drops a collection.
    pub fn drop_collection(&self, name: &str) -> Result<(), ClientError> {
        self.call(&Request::DropCollection(CollectionRef {
            name: name.to_owned(),
        }))
        .map(drop)
    }

    /// Lists collections.
    pub fn list_collections(&self) -> Result<Vec<CollectionInfo>, ClientError> {
        match self.call(&Request::ListCollections)? {
            Response::Collections(list) => Ok(list.collections),
            other => Err(unexpected(Opcode::ListCollections, &other)),
        }
    }

    /// Describes a collection.
    pub fn describe_collection(&self, name: &str) -> Result<CollectionInfo, ClientError> {
        match self.call(&Request::DescribeCollection(CollectionRef {
            name: name.to_owned(),
        }))? {
            Response::Collection(info) => Ok(info),
            other => Err(unexpected(Opcode::DescribeCollection, &other)),
        }
    }

    /// Upserts a batch; returns the number of points written.
    pub fn upsert(&self, upsert: Upsert) -> Result<u32, ClientError> {
        match self.call(&Request::Upsert(upsert))? {
            Response::Upserted(ack) => Ok(ack.count),
            other => Err(unexpected(Opcode::Upsert, &other)),
        }
    }

    /// Deletes points; returns how many existed.
    pub fn delete(&self, collection: &str, ids: Vec<u64>) -> Result<u32, ClientError> {
        match self.call(&Request::Delete(Delete {
            collection: collection.to_owned(),
            ids,
        }))? {
            Response::Deleted(ack) => Ok(ack.count),
            other => Err(unexpected(Opcode::Delete, &other)),
        }
    }

    /// Fetches points with their vectors and payloads.
    pub fn get(&self, collection: &str, ids: Vec<u64>) -> Result<Vec<PointRecord>, ClientError> {
        match self.call(&Request::Get(Get {
            collection: collection.to_owned(),
            ids,
            with_vectors: true,
            with_payload: true,
        }))? {
            Response::Points(result) => Ok(result.points),
            other => Err(unexpected(Opcode::Get, &other)),
        }
    }

    /// k-nearest-neighbour search.
    pub fn search(&self, search: Search) -> Result<Vec<Hit>, ClientError> {
        self.search_spread(search, false)
    }

    /// k-nearest-neighbour search, with `fan_out` spread over every LEU of the server (the
    /// FAN_OUT flag: lower latency for one search on idle cores, fewer searches per second)
    /// instead of run whole on the LEU that reads it.
    pub fn search_spread(&self, search: Search, fan_out: bool) -> Result<Vec<Hit>, ClientError> {
        let flags = if fan_out { FLAG_FAN_OUT } else { 0 };
        match self.send_flagged(&Request::Search(search), flags)?.wait()? {
            Response::Hits(result) => Ok(result.hits),
            other => Err(unexpected(Opcode::Search, &other)),
        }
    }

    /// Counts points, optionally filtered.
    pub fn count(&self, collection: &str, filter: Option<Filter>) -> Result<u64, ClientError> {
        match self.call(&Request::Count(Count {
            collection: collection.to_owned(),
            filter,
        }))? {
            Response::Counted(result) => Ok(result.count),
            other => Err(unexpected(Opcode::Count, &other)),
        }
    }

    /// Per-LEU statistics.
    pub fn stats(&self) -> Result<Vec<LeuStats>, ClientError> {
        match self.call(&Request::Stats)? {
            Response::Stats(result) => Ok(result.leus),
            other => Err(unexpected(Opcode::Stats, &other)),
        }
    }

    /// Starts a scrubber pass on every LEU now (a pass already running goes on); its
    /// progress and findings are in [`Client::stats`] (`scrub_*` counters, docs/VBP.md).
    pub fn scrub(&self) -> Result<(), ClientError> {
        match self.call(&Request::Scrub)? {
            Response::Scrubbing => Ok(()),
            other => Err(unexpected(Opcode::Scrub, &other)),
        }
    }

    /// The tables fenced for damage on every LEU (each refused to requests that need it,
    /// with [`ErrorCode::Fenced`] naming the same range): empty on a healthy node.
    pub fn fenced(&self) -> Result<Vec<FencedTable>, ClientError> {
        match self.call(&Request::Fenced)? {
            Response::FencedTables(body) => Ok(body.tables),
            other => Err(unexpected(Opcode::Fenced, &other)),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.connection.lock() {
            if let Some(connection) = slot.take() {
                connection.fail("client dropped");
            }
        }
    }
}

fn unexpected(expected: Opcode, got: &Response) -> ClientError {
    ClientError::UnexpectedResponse {
        expected,
        got: got.opcode(),
    }
}

/// The reader thread: decode responses, route them by request id.
fn read_responses(mut stream: TcpStream, connection: &Connection, frame_size_max_bytes: u32) {
    let large_buffer_bytes = (frame_size_max_bytes as usize).div_ceil(BUFFER_ALIGN) * BUFFER_ALIGN;
    // Allocated as responses need it: a client that only pings or searches never pays for
    // the frame-sized buffers (zero-filling 2 × 16 MiB took ~20 ms of the first request).
    let pool = match BufferPool::on_demand(PoolConfig {
        buffer_bytes: 64 << 10,
        buffer_count: 4,
        medium_buffer_bytes: large_buffer_bytes.max(64 << 10),
        medium_buffer_count: 1,
        large_buffer_bytes: large_buffer_bytes.max(64 << 10),
        large_buffer_count: 1,
    }) {
        Ok(pool) => pool,
        Err(error) => return connection.fail(&error.to_string()),
    };
    let validator = LayoutValidator::new(frame_size_max_bytes);
    let mut decoder = StreamDecoder::new(pool.clone(), validator);
    loop {
        let mut lease = match pool.lease(SizeClass::Standard) {
            Ok(lease) => lease,
            Err(error) => return connection.fail(&error.to_string()),
        };
        let offset = decoder.receive_offset();
        let received = match stream.read(&mut lease.as_mut_slice()[offset..]) {
            Ok(0) => return connection.fail("the server closed the connection"),
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return connection.fail(&format!("read failed: {error}")),
        };
        if let Err(error) = decoder.push(lease, offset..offset + received) {
            return connection.fail(&error.to_string());
        }
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(StreamError::Pool(error)) => return connection.fail(&error.to_string()),
                Err(error) => return connection.fail(&format!("bad response stream: {error}")),
            };
            let request_id = frame.header().request_id;
            let reply = validator
                .response(frame.bytes())
                .map(|(_, response)| response);
            let Some(waiting) = connection.pending().remove(&request_id) else {
                // A response to a request that timed out: drop it.
                continue;
            };
            connection.slots_free.notify_one();
            let reply = reply.map_err(|error: FrameError| ClientError::ConnectionLost {
                endpoint: connection.endpoint,
                reason: format!("invalid response frame: {error}"),
            });
            let _ = waiting.try_send(reply);
        }
    }
}
