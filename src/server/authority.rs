//! Repairs the HTTP/2 `:authority` that Secrets Store CSI drivers up to v1.5.6 send.
//!
//! Those drivers (grpc-go 1.56 dialing a socket path) send the raw socket path, e.g.
//! `/var/run/secrets-store-csi-providers/akeyless.sock`, as `:authority`. hyperium/h2 resets such
//! a stream ("malformed authority") before tonic sees it, and no option of h2, hyper or tonic
//! turns that check off. [`AuthorityFix`] wraps each accepted connection and, in the
//! client→server bytes only, rewrites an `:authority` that [`http::uri::Authority`] cannot parse
//! to `localhost` (shared/reference/csi-driver.md §1.6a). Whatever it does not understand passes
//! through untouched, so h2 still answers malformed input with its own errors.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::uri::Authority;
use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The connection preface every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Largest header block (its frames as received) held for inspection; a larger one passes raw.
const MAX_BLOCK: usize = 1 << 20;
/// Largest decoded header list (RFC 9113 §6.5.2 accounting: name + value + 32 per field).
const MAX_HEADER_LIST: usize = 1 << 20;
/// Frames we build stay within the smallest allowed SETTINGS_MAX_FRAME_SIZE, so the server's
/// settings never need to be read.
const MAX_FRAME: usize = 16_384;
/// The HPACK dynamic table size clients may use: the default, as tonic never announces another.
const TABLE_SIZE: usize = 4096;
const READ_CHUNK: usize = 8192;
/// Buffers that grew past this for one large header block are released afterwards.
const KEEP_CAPACITY: usize = 64 * 1024;
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// An accepted connection whose client→server HTTP/2 bytes get an unparsable `:authority`
/// replaced by `localhost`.
///
/// Header blocks are forwarded byte for byte until one needs the rewrite; from then on every
/// block is re-encoded as literals, because the server's HPACK table no longer matches the
/// client's. Other frames stream through unbuffered; server→client bytes are never touched.
pub struct AuthorityFix<S> {
    inner: S,
    phase: Phase,
    /// Client bytes read but not processed yet (a partial frame header plus at most one read).
    input: Vec<u8>,
    /// Where client bytes are read to before they join `input`; allocated on first use.
    scratch: Option<Box<[u8]>>,
    /// Processed bytes not yet handed to the server, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// The header block being collected, between a HEADERS frame and END_HEADERS.
    block: Option<Block>,
    /// Mirrors the client's HPACK encoder, so indexed fields can be read.
    decoder: Decoder<'static>,
    /// A block was rewritten: re-encode every later one.
    reencode: bool,
    eof: bool,
    /// A block could not be re-encoded after an earlier rewrite: the connection is unusable.
    failed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Matching the client preface; `matched` bytes of it seen so far.
    Preface { matched: usize },
    /// Waiting for the next 9-byte frame header.
    FrameHeader,
    /// Streaming the payload of a frame other than HEADERS/CONTINUATION.
    Payload { remaining: usize },
    /// Buffering the payload of a HEADERS or CONTINUATION frame into `block`.
    BlockPayload { remaining: usize },
    /// Not rewriting anymore: everything passes through.
    Raw,
}

#[derive(Debug, Clone, Copy)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHead {
    fn parse(b: &[u8; FRAME_HEADER_LEN]) -> Self {
        Self {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

struct Block {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    /// The frames exactly as received, for forwarding untouched.
    raw: Vec<u8>,
    /// The HPACK bytes alone, without padding and priority fields.
    fragment: Vec<u8>,
    /// The frame whose payload is being collected.
    frame: FrameHead,
}

/// Re-encoding became impossible after an earlier rewrite; forwarding raw would let the server
/// read the block against a table that no longer matches.
struct Fatal(&'static str);

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            inner,
            phase: Phase::Preface { matched: 0 },
            input: Vec::new(),
            scratch: None,
            out: Vec::new(),
            out_pos: 0,
            block: None,
            decoder,
            reencode: false,
            eof: false,
            failed: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes as much of `input` as the current phase allows; returns how many bytes.
    fn process(&mut self) -> Result<usize, Fatal> {
        let mut input = std::mem::take(&mut self.input);
        let mut pos = 0;
        let result = self.process_from(&input, &mut pos);
        input.drain(..pos);
        self.input = input;
        result.map(|()| pos)
    }

    fn process_from(&mut self, input: &[u8], pos: &mut usize) -> Result<(), Fatal> {
        while let Some(rest) = input.get(*pos..).filter(|rest| !rest.is_empty()) {
            match self.phase {
                Phase::Raw => {
                    self.out.extend_from_slice(rest);
                    *pos = input.len();
                }
                Phase::Preface { matched } => {
                    let want = &PREFACE[matched..];
                    let n = want.len().min(rest.len());
                    if rest[..n] == want[..n] {
                        self.out.extend_from_slice(&rest[..n]);
                        *pos += n;
                        self.phase = if matched + n == PREFACE.len() {
                            Phase::FrameHeader
                        } else {
                            Phase::Preface {
                                matched: matched + n,
                            }
                        };
                    } else {
                        // Not HTTP/2 with prior knowledge: none of our business.
                        self.phase = Phase::Raw;
                    }
                }
                Phase::Payload { remaining } => {
                    let n = remaining.min(rest.len());
                    self.out.extend_from_slice(&rest[..n]);
                    *pos += n;
                    self.phase = after_payload(remaining - n);
                }
                Phase::FrameHeader => {
                    let Some(head) = rest.first_chunk::<FRAME_HEADER_LEN>() else {
                        break;
                    };
                    *pos += FRAME_HEADER_LEN;
                    self.on_frame_header(head)?;
                }
                Phase::BlockPayload { remaining } => {
                    let n = remaining.min(rest.len());
                    let Some(block) = self.block.as_mut() else {
                        self.phase = Phase::Raw;
                        continue;
                    };
                    block.raw.extend_from_slice(&rest[..n]);
                    *pos += n;
                    if n == remaining {
                        self.on_block_frame_done()?;
                    } else {
                        self.phase = Phase::BlockPayload {
                            remaining: remaining - n,
                        };
                    }
                }
            }
        }
        Ok(())
    }

    fn on_frame_header(&mut self, bytes: &[u8; FRAME_HEADER_LEN]) -> Result<(), Fatal> {
        let head = FrameHead::parse(bytes);
        if let Some(block) = self.block.as_mut() {
            if head.kind != CONTINUATION || head.stream_id != block.stream_id {
                // RFC 9113 §6.10 allows nothing else here; h2 answers with GOAWAY(PROTOCOL_ERROR)
                // before it reads the block, so raw forwarding is safe even after a rewrite.
                self.stop_rewriting(bytes);
                return Ok(());
            }
            if block.raw.len() + FRAME_HEADER_LEN + head.len > MAX_BLOCK {
                return self.give_up(bytes, "header block larger than 1 MiB");
            }
            block.raw.extend_from_slice(bytes);
            block.frame = head;
        } else if head.kind == HEADERS {
            if FRAME_HEADER_LEN + head.len > MAX_BLOCK {
                return self.give_up(bytes, "header block larger than 1 MiB");
            }
            self.block = Some(Block {
                stream_id: head.stream_id,
                end_stream: false,
                priority: None,
                raw: bytes.to_vec(),
                fragment: Vec::new(),
                frame: head,
            });
        } else {
            self.out.extend_from_slice(bytes);
            self.phase = after_payload(head.len);
            return Ok(());
        }
        if head.len == 0 {
            self.on_block_frame_done()
        } else {
            self.phase = Phase::BlockPayload {
                remaining: head.len,
            };
            Ok(())
        }
    }

    /// A HEADERS or CONTINUATION payload is complete in `block.raw`.
    fn on_block_frame_done(&mut self) -> Result<(), Fatal> {
        let Some(block) = self.block.as_mut() else {
            self.phase = Phase::Raw;
            return Ok(());
        };
        let head = block.frame;
        let payload = &block.raw[block.raw.len().saturating_sub(head.len)..];
        if head.kind == HEADERS {
            let Some((priority, fragment)) = split_headers_payload(head, payload) else {
                // Bad padding, short priority or stream 0: h2 rejects the frame itself.
                self.stop_rewriting(&[]);
                return Ok(());
            };
            block.priority = priority;
            block.end_stream = head.flags & END_STREAM != 0;
            block.fragment.extend_from_slice(fragment);
        } else {
            block.fragment.extend_from_slice(payload);
        }
        if head.flags & END_HEADERS != 0 {
            self.finish_block()
        } else {
            self.phase = Phase::FrameHeader;
            Ok(())
        }
    }

    fn finish_block(&mut self) -> Result<(), Fatal> {
        let Some(block) = self.block.take() else {
            self.phase = Phase::Raw;
            return Ok(());
        };
        self.phase = Phase::FrameHeader;
        let fields = match decode_block(&mut self.decoder, &block.fragment) {
            Ok(fields) => fields,
            Err(why) => {
                self.block = Some(block);
                return self.give_up(&[], why);
            }
        };
        let malformed = fields
            .iter()
            .any(|(name, value)| name == b":authority" && Authority::try_from(&value[..]).is_err());
        if !malformed && !self.reencode {
            self.out.extend_from_slice(&block.raw);
            return Ok(());
        }
        if !self.reencode {
            tracing::debug!("rewriting an unparsable HTTP/2 :authority to localhost");
            self.reencode = true;
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() + 16);
        for (name, value) in &fields {
            let value = if name == b":authority" && Authority::try_from(&value[..]).is_err() {
                REPLACEMENT_AUTHORITY
            } else {
                &value[..]
            };
            encode_literal(&mut encoded, name, value);
        }
        push_header_frames(
            &mut self.out,
            block.stream_id,
            block.end_stream,
            block.priority,
            &encoded,
        );
        Ok(())
    }

    /// Forwards the pending block and `extra` as received and passes the rest through.
    fn stop_rewriting(&mut self, extra: &[u8]) {
        if let Some(block) = self.block.take() {
            self.out.extend_from_slice(&block.raw);
        }
        self.out.extend_from_slice(extra);
        self.phase = Phase::Raw;
    }

    /// Stops rewriting if the server's table still matches the client's; fails otherwise.
    fn give_up(&mut self, extra: &[u8], why: &'static str) -> Result<(), Fatal> {
        if self.reencode {
            return Err(Fatal(why));
        }
        tracing::debug!(
            reason = why,
            "passing an HTTP/2 connection through unchanged"
        );
        self.stop_rewriting(extra);
        Ok(())
    }

    /// End of the client's bytes: hand over whatever is pending as received.
    fn on_eof(&mut self) {
        self.eof = true;
        let input = std::mem::take(&mut self.input);
        self.stop_rewriting(&input);
    }
}

impl<S: AsyncRead + Unpin> AuthorityFix<S> {
    /// Reads from the client into `input`; `Ok(0)` means EOF.
    fn fill_input(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let scratch = self
            .scratch
            .get_or_insert_with(|| vec![0; READ_CHUNK].into_boxed_slice());
        let mut buf = ReadBuf::new(scratch);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf))?;
        self.input.extend_from_slice(buf.filled());
        Poll::Ready(Ok(buf.filled().len()))
    }

    /// Reads at most `limit` client bytes straight into the caller's buffer.
    fn read_direct(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        limit: usize,
    ) -> Poll<io::Result<usize>> {
        let before = buf.filled().len();
        if buf.remaining() <= limit {
            ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
            return Poll::Ready(Ok(buf.filled().len() - before));
        }
        // Without `unsafe`, a shorter view of the caller's buffer must be initialized first.
        let mut direct = ReadBuf::new(buf.initialize_unfilled_to(limit));
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut direct))?;
        let n = direct.filled().len();
        buf.advance(n);
        Poll::Ready(Ok(n))
    }

    /// Copies pending output into `buf`; false if there was none.
    fn drain_out(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let pending = &self.out[self.out_pos..];
        if pending.is_empty() {
            return false;
        }
        let n = buf.remaining().min(pending.len());
        buf.put_slice(&pending[..n]);
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            self.out_pos = 0;
            self.out.clear();
            if self.out.capacity() > KEEP_CAPACITY {
                self.out = Vec::new();
            }
        }
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.drain_out(buf) {
                return Poll::Ready(Ok(()));
            }
            if this.failed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "HTTP/2 header block cannot be re-encoded",
                )));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if !this.input.is_empty() {
                match this.process() {
                    Ok(0) => {}
                    Ok(_) => continue,
                    Err(Fatal(why)) => {
                        tracing::debug!(reason = why, "closing an HTTP/2 connection");
                        this.failed = true;
                        continue;
                    }
                }
            }
            if this.input.is_empty() {
                match this.phase {
                    Phase::Raw => return Pin::new(&mut this.inner).poll_read(cx, buf),
                    Phase::Payload { remaining } => {
                        let n = ready!(this.read_direct(cx, buf, remaining))?;
                        if n == 0 {
                            this.eof = true;
                        } else {
                            this.phase = after_payload(remaining - n);
                        }
                        return Poll::Ready(Ok(()));
                    }
                    _ => {}
                }
            }
            if ready!(this.fill_input(cx))? == 0 {
                this.on_eof();
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Keeps the peer credentials of the unix socket available to the service.
impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: fmt::Debug> fmt::Debug for AuthorityFix<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorityFix")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .field("reencode", &self.reencode)
            .finish_non_exhaustive()
    }
}

fn after_payload(remaining: usize) -> Phase {
    if remaining == 0 {
        Phase::FrameHeader
    } else {
        Phase::Payload { remaining }
    }
}

/// Splits a HEADERS payload into its priority fields and header block fragment, dropping the
/// padding (RFC 9113 §6.2). `None` if the frame is malformed.
fn split_headers_payload(head: FrameHead, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    if head.stream_id == 0 {
        return None;
    }
    let mut rest = payload;
    let mut pad = 0;
    if head.flags & PADDED != 0 {
        let (&len, after) = rest.split_first()?;
        pad = usize::from(len);
        rest = after;
    }
    let mut priority = None;
    if head.flags & PRIORITY != 0 {
        let (fields, after) = rest.split_first_chunk::<5>()?;
        priority = Some(*fields);
        rest = after;
    }
    let end = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..end]))
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Decodes one complete header block, keeping the decoder in step with the client's encoder.
fn decode_block(decoder: &mut Decoder<'static>, fragment: &[u8]) -> Result<Fields, &'static str> {
    let mut fields = Vec::new();
    let mut size = 0usize;
    decoder
        .decode_with_cb(fragment, |name, value| {
            size = size.saturating_add(name.len() + value.len() + 32);
            if size <= MAX_HEADER_LIST {
                fields.push((name.into_owned(), value.into_owned()));
            }
        })
        .map_err(|_| "undecodable HPACK block")?;
    if size > MAX_HEADER_LIST {
        return Err("header list larger than 1 MiB");
    }
    Ok(fields)
}

/// Appends a "literal header field without indexing — new name" (RFC 7541 §6.2.2): it leaves
/// the server's dynamic table alone, which is all a rewritten connection may still rely on.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    for s in [name, value] {
        encode_integer(out, s.len(), 7, 0x00); // H = 0: no Huffman coding
        out.extend_from_slice(s);
    }
}

/// An HPACK integer with a `prefix_bits`-bit prefix (RFC 7541 §5.1).
fn encode_integer(out: &mut Vec<u8>, value: usize, prefix_bits: u32, first_byte: u8) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first_byte | value as u8);
        return;
    }
    out.push(first_byte | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// Frames a re-encoded block as HEADERS plus CONTINUATIONs of at most [`MAX_FRAME`] bytes.
fn push_header_frames(
    out: &mut Vec<u8>,
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: &[u8],
) {
    let priority_len = priority.map_or(0, |p| p.len());
    let (first, mut rest) = block.split_at(block.len().min(MAX_FRAME - priority_len));
    let mut flags = 0;
    if end_stream {
        flags |= END_STREAM;
    }
    if priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    push_frame_header(out, priority_len + first.len(), HEADERS, flags, stream_id);
    if let Some(priority) = priority {
        out.extend_from_slice(&priority);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME));
        let flags = if after.is_empty() { END_HEADERS } else { 0 };
        push_frame_header(out, chunk.len(), CONTINUATION, flags, stream_id);
        out.extend_from_slice(chunk);
        rest = after;
    }
}

fn push_frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream_id: u32) {
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use hyper_util::rt::TokioIo;
    use loona_hpack::Encoder;
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{UnixListener, UnixStream};
    use tokio_stream::StreamExt;
    use tokio_stream::wrappers::UnixListenerStream;
    use tonic::transport::server::UdsConnectInfo;
    use tonic::transport::{Endpoint, Server, Uri};
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::proto::v1alpha1::csi_driver_provider_client::CsiDriverProviderClient;
    use crate::proto::v1alpha1::csi_driver_provider_server::{
        CsiDriverProvider, CsiDriverProviderServer,
    };
    use crate::proto::v1alpha1::{
        File, MountRequest, MountResponse, ObjectVersion, VersionRequest, VersionResponse,
    };

    /// What drivers up to v1.5.6 send as `:authority`.
    const SOCKET_PATH: &str = "/var/run/secrets-store-csi-providers/akeyless.sock";
    const VERSION_PATH: &str = "/v1alpha1.CSIDriverProvider/Version";
    const SETTINGS: u8 = 0x4;
    const DATA: u8 = 0x0;

    struct TestSvc;

    #[tonic::async_trait]
    impl CsiDriverProvider for TestSvc {
        async fn version(
            &self,
            _request: Request<VersionRequest>,
        ) -> Result<Response<VersionResponse>, Status> {
            Ok(Response::new(expected_version()))
        }

        async fn mount(
            &self,
            request: Request<MountRequest>,
        ) -> Result<Response<MountResponse>, Status> {
            let uid = request
                .extensions()
                .get::<UdsConnectInfo>()
                .and_then(|info| info.peer_cred)
                .map_or_else(|| "none".to_owned(), |cred| cred.uid().to_string());
            let request = request.into_inner();
            Ok(Response::new(MountResponse {
                object_version: vec![ObjectVersion {
                    id: "peer-uid".into(),
                    version: uid,
                }],
                error: None,
                files: vec![File {
                    path: "echo".into(),
                    mode: 0o644,
                    contents: request.attributes.into_bytes(),
                }],
            }))
        }
    }

    fn expected_version() -> VersionResponse {
        VersionResponse {
            version: "v1alpha1".into(),
            runtime_name: "authority-test".into(),
            runtime_version: "1.2.3".into(),
        }
    }

    /// Serves `TestSvc` on `dir/akeyless.sock`, each connection through the adapter or not.
    fn serve(dir: &Path, with_fix: bool) -> PathBuf {
        let path = dir.join("akeyless.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let router = Server::builder()
            .http2_max_header_list_size(1 << 20)
            .add_service(CsiDriverProviderServer::new(TestSvc));
        let incoming = UnixListenerStream::new(listener);
        if with_fix {
            tokio::spawn(
                router.serve_with_incoming(incoming.map(|conn| conn.map(AuthorityFix::new))),
            );
        } else {
            tokio::spawn(router.serve_with_incoming(incoming));
        }
        path
    }

    async fn within<T>(future: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), future)
            .await
            .expect("timed out")
    }

    // ---- a raw HTTP/2 client -------------------------------------------------------------

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_frame_header(&mut out, payload.len(), kind, flags, stream_id);
        out.extend_from_slice(payload);
        out
    }

    fn headers(stream_id: u32, block: &[u8]) -> Vec<u8> {
        frame(HEADERS, END_HEADERS, stream_id, block)
    }

    fn grpc_data(stream_id: u32, message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut payload = vec![0];
        payload.extend_from_slice(&(body.len() as u32).to_be_bytes());
        payload.extend_from_slice(&body);
        frame(DATA, END_STREAM, stream_id, &payload)
    }

    fn version_request() -> VersionRequest {
        VersionRequest {
            version: "v1alpha1".into(),
        }
    }

    /// A string literal without Huffman coding.
    fn string(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_integer(&mut out, s.len(), 7, 0x00);
        out.extend_from_slice(s.as_bytes());
        out
    }

    /// The HPACK Huffman code (RFC 7541 Appendix B) of the characters our tests use.
    fn huffman_code(c: u8) -> Option<(u64, u32)> {
        Some(match c {
            b'-' => (0x16, 6),
            b'.' => (0x17, 6),
            b'/' => (0x18, 6),
            b'0' => (0x0, 5),
            b'1' => (0x1, 5),
            b'2' => (0x2, 5),
            b'3'..=b'9' => (0x19 + u64::from(c - b'3'), 6),
            b':' => (0x5c, 7),
            b'_' => (0x22, 6),
            b'a' => (0x3, 5),
            b'b' => (0x23, 6),
            b'c' => (0x4, 5),
            b'd' => (0x24, 6),
            b'e' => (0x5, 5),
            b'f' => (0x25, 6),
            b'g' => (0x26, 6),
            b'h' => (0x27, 6),
            b'i' => (0x6, 5),
            b'j' => (0x74, 7),
            b'k' => (0x75, 7),
            b'l' => (0x28, 6),
            b'm' => (0x29, 6),
            b'n' => (0x2a, 6),
            b'o' => (0x7, 5),
            b'p' => (0x2b, 6),
            b'q' => (0x76, 7),
            b'r' => (0x2c, 6),
            b's' => (0x8, 5),
            b't' => (0x9, 5),
            b'u' => (0x2d, 6),
            b'v' => (0x77, 7),
            b'w' => (0x78, 7),
            b'x' => (0x79, 7),
            b'y' => (0x7a, 7),
            b'z' => (0x7b, 7),
            _ => return None,
        })
    }

    /// A Huffman-coded string literal, as grpc-go sends them; `None` outside our small table.
    fn try_huffman(s: &[u8]) -> Option<Vec<u8>> {
        let (mut bits, mut nbits, mut coded) = (0u64, 0u32, Vec::new());
        for &c in s {
            let (code, len) = huffman_code(c)?;
            bits = bits << len | code;
            nbits += len;
            while nbits >= 8 {
                nbits -= 8;
                coded.push((bits >> nbits) as u8);
            }
            bits &= (1 << nbits) - 1;
        }
        if nbits > 0 {
            // Pad with the most significant bits of EOS (all ones).
            coded.push((bits << (8 - nbits) | ((1 << (8 - nbits)) - 1)) as u8);
        }
        let mut out = Vec::new();
        encode_integer(&mut out, coded.len(), 7, 0x80);
        out.extend_from_slice(&coded);
        Some(out)
    }

    fn huffman(s: &str) -> Vec<u8> {
        try_huffman(s.as_bytes()).unwrap()
    }

    /// `:method POST`, `:scheme http` and `:path` of Version, all without touching the table.
    fn request_start() -> Vec<u8> {
        let mut block = vec![0x83, 0x86, 0x04];
        block.extend(string(VERSION_PATH));
        block
    }

    /// `content-type` and `te`, literals without indexing.
    fn request_end() -> Vec<u8> {
        let mut block = vec![0x0f, 0x10]; // content-type: static index 31 = 15 + 16
        block.extend(string("application/grpc"));
        block.push(0x00);
        block.extend(string("te"));
        block.extend(string("trailers"));
        block
    }

    /// A Version request block whose `:authority` field is `authority_field`.
    fn version_block(authority_field: &[u8]) -> Vec<u8> {
        [request_start(), authority_field.to_vec(), request_end()].concat()
    }

    /// `:authority` (static name index 1) as a literal without indexing.
    fn authority_literal(value: &str) -> Vec<u8> {
        [vec![0x01], string(value)].concat()
    }

    #[derive(Debug, Default)]
    struct RawResponse {
        headers: Vec<(String, String)>,
        data: Vec<u8>,
        trailers: Vec<(String, String)>,
    }

    impl RawResponse {
        fn get(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .chain(&self.trailers)
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        fn assert_version_ok(&self) {
            assert_eq!(self.get(":status"), Some("200"), "{self:?}");
            assert_eq!(self.get("grpc-status"), Some("0"), "{self:?}");
            assert_eq!(self.data.first(), Some(&0), "compressed or empty: {self:?}");
            let len = u32::from_be_bytes(self.data[1..5].try_into().unwrap()) as usize;
            assert_eq!(self.data.len(), 5 + len);
            let response = VersionResponse::decode(&self.data[5..]).unwrap();
            assert_eq!(response, expected_version());
        }
    }

    struct RawFrame {
        kind: u8,
        flags: u8,
        stream_id: u32,
        payload: Vec<u8>,
    }

    struct RawConn {
        stream: UnixStream,
        buf: Vec<u8>,
        decoder: Decoder<'static>,
    }

    impl RawConn {
        async fn open(path: &Path) -> Self {
            let mut stream = UnixStream::connect(path).await.unwrap();
            let hello = [PREFACE, &frame(SETTINGS, 0, 0, &[])].concat();
            stream.write_all(&hello).await.unwrap();
            Self {
                stream,
                buf: Vec::new(),
                decoder: Decoder::new(),
            }
        }

        async fn send(&mut self, frames: &[Vec<u8>]) {
            self.try_send(frames).await.unwrap();
        }

        async fn try_send(&mut self, frames: &[Vec<u8>]) -> io::Result<()> {
            self.stream.write_all(&frames.concat()).await
        }

        async fn read_frame(&mut self) -> Option<RawFrame> {
            loop {
                if let Some(head) = self.buf.first_chunk::<FRAME_HEADER_LEN>() {
                    let head = FrameHead::parse(head);
                    if self.buf.len() >= FRAME_HEADER_LEN + head.len {
                        let payload = self.buf[FRAME_HEADER_LEN..][..head.len].to_vec();
                        self.buf.drain(..FRAME_HEADER_LEN + head.len);
                        return Some(RawFrame {
                            kind: head.kind,
                            flags: head.flags,
                            stream_id: head.stream_id,
                            payload,
                        });
                    }
                }
                let mut chunk = [0; 16384];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        }

        /// Reads until `stream_id` ends, answering SETTINGS and PING; `Err` describes a reset,
        /// a GOAWAY or a closed connection.
        async fn response(&mut self, stream_id: u32) -> Result<RawResponse, String> {
            let mut response = RawResponse::default();
            let mut block = Vec::new();
            let mut ending = false;
            loop {
                let frame = self
                    .read_frame()
                    .await
                    .ok_or("connection closed before the response ended")?;
                match frame.kind {
                    SETTINGS if frame.flags & 1 == 0 => {
                        let _ = self.try_send(&[self::frame(SETTINGS, 1, 0, &[])]).await;
                    }
                    0x6 if frame.flags & 1 == 0 => {
                        let _ = self
                            .try_send(&[self::frame(0x6, 1, 0, &frame.payload)])
                            .await;
                    }
                    0x7 => return Err(format!("GOAWAY {:?}", frame.payload)),
                    0x3 if frame.stream_id == stream_id => {
                        return Err(format!("RST_STREAM {:?}", frame.payload));
                    }
                    HEADERS | CONTINUATION => {
                        if frame.kind == HEADERS {
                            ending = frame.flags & END_STREAM != 0;
                        }
                        block.extend_from_slice(&frame.payload);
                        if frame.flags & END_HEADERS != 0 {
                            let fields = self.decoder.decode(&block).unwrap();
                            block.clear();
                            let fields = fields
                                .into_iter()
                                .map(|(n, v)| {
                                    (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                                })
                                .collect();
                            if response.headers.is_empty() {
                                response.headers = fields;
                            } else {
                                response.trailers = fields;
                            }
                            if ending && frame.stream_id == stream_id {
                                return Ok(response);
                            }
                        }
                    }
                    DATA if frame.stream_id == stream_id => {
                        response.data.extend_from_slice(&frame.payload);
                        if frame.flags & END_STREAM != 0 {
                            return Ok(response);
                        }
                    }
                    _ => {}
                }
            }
        }

        /// Sends one Version call as `frames` (headers) plus the request body and checks it.
        async fn version_ok(&mut self, stream_id: u32, mut frames: Vec<Vec<u8>>) {
            frames.push(grpc_data(stream_id, &version_request()));
            self.send(&frames).await;
            within(self.response(stream_id))
                .await
                .unwrap_or_else(|e| panic!("stream {stream_id}: {e}"))
                .assert_version_ok();
        }
    }

    // ---- through a real tonic server -----------------------------------------------------

    #[tokio::test]
    async fn plain_tonic_resets_a_socket_path_authority() {
        // Why the adapter exists: if this starts passing, h2 stopped rejecting the raw path.
        let dir = tempfile::tempdir().unwrap();
        let mut conn = RawConn::open(&serve(dir.path(), false)).await;
        let block = version_block(&authority_literal(SOCKET_PATH));
        conn.send(&[headers(1, &block), grpc_data(1, &version_request())])
            .await;
        let error = within(conn.response(1)).await.unwrap_err();
        assert!(error.starts_with("RST_STREAM [0, 0, 0, 1]"), "{error}");
    }

    #[tokio::test]
    async fn rewrites_a_literal_authority() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = RawConn::open(&serve(dir.path(), true)).await;
        let block = version_block(&authority_literal(SOCKET_PATH));
        conn.version_ok(1, vec![headers(1, &block)]).await;
        // A literal with a literal name, on a second stream (now re-encoded).
        let field = [vec![0x00], string(":authority"), string(SOCKET_PATH)].concat();
        conn.version_ok(3, vec![headers(3, &version_block(&field))])
            .await;
    }

    #[tokio::test]
    async fn rewrites_a_huffman_coded_authority() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = RawConn::open(&serve(dir.path(), true)).await;
        let mut block = request_start();
        block.extend([vec![0x01], huffman(SOCKET_PATH)].concat());
        block.extend([vec![0x0f, 0x10], huffman("application/grpc")].concat());
        block.extend([vec![0x00], huffman("te"), huffman("trailers")].concat());
        conn.version_ok(1, vec![headers(1, &block)]).await;
    }

    #[tokio::test]
    async fn follows_the_dynamic_table_across_requests() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = RawConn::open(&serve(dir.path(), true)).await;
        // Stream 1 is fine as sent and passes unchanged; it indexes :path, :authority,
        // content-type and te: table = te(62) content-type(63) localhost(64) path(65).
        let mut block = vec![0x83, 0x86, 0x44];
        block.extend(string(VERSION_PATH));
        block.extend([vec![0x41], string("localhost")].concat());
        block.extend([vec![0x5f], string("application/grpc")].concat());
        block.extend([vec![0x40], string("te"), string("trailers")].concat());
        conn.version_ok(1, vec![headers(1, &block)]).await;
        // Stream 3 indexes the socket path: bad(62) te(63) content-type(64) localhost(65) path(66).
        let mut block = vec![0x83, 0x86, 0x80 | 65];
        block.extend([vec![0x41], huffman(SOCKET_PATH)].concat());
        block.extend([0x80 | 64, 0x80 | 63]);
        conn.version_ok(3, vec![headers(3, &block)]).await;
        // Stream 5 refers to the socket path by index only.
        let block = [0x83, 0x86, 0x80 | 66, 0x80 | 62, 0x80 | 64, 0x80 | 63];
        conn.version_ok(5, vec![headers(5, &block)]).await;
        // Stream 7 refers to `localhost` by index: still re-encoded, still right.
        let block = [0x83, 0x86, 0x80 | 66, 0x80 | 65, 0x80 | 64, 0x80 | 63];
        conn.version_ok(7, vec![headers(7, &block)]).await;
    }

    #[tokio::test]
    async fn strips_padding_and_keeps_priority() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = RawConn::open(&serve(dir.path(), true)).await;
        let block = version_block(&authority_literal(SOCKET_PATH));
        let payload = [&[7][..], &[0, 0, 0, 0, 15], &block, &[0; 7]].concat();
        let flags = END_HEADERS | PADDED | PRIORITY;
        conn.version_ok(1, vec![frame(HEADERS, flags, 1, &payload)])
            .await;
        let payload = [&[3][..], &block, &[0; 3]].concat();
        conn.version_ok(3, vec![frame(HEADERS, END_HEADERS | PADDED, 3, &payload)])
            .await;
    }

    #[tokio::test]
    async fn keeps_end_stream_on_headers() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = RawConn::open(&serve(dir.path(), true)).await;
        let block = version_block(&authority_literal(SOCKET_PATH));
        conn.send(&[frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)])
            .await;
        // No request message at all: tonic answers (instead of waiting for a body) with an error.
        let response = within(conn.response(1)).await.unwrap();
        assert_eq!(response.get(":status"), Some("200"), "{response:?}");
        assert!(!matches!(response.get("grpc-status"), None | Some("0")));
    }

    #[tokio::test]
    async fn reassembles_continuations() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = RawConn::open(&serve(dir.path(), true)).await;
        let block = version_block(&[vec![0x01], huffman(SOCKET_PATH)].concat());
        let (one, rest) = block.split_at(5);
        let (two, three) = rest.split_at(30); // splits inside the path string
        let payload = [&[2][..], &[0, 0, 0, 0, 200], one, &[0; 2]].concat();
        conn.version_ok(
            1,
            vec![
                frame(HEADERS, PADDED | PRIORITY, 1, &payload),
                frame(CONTINUATION, 0, 1, two),
                frame(CONTINUATION, END_HEADERS, 1, three),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn splits_large_reencoded_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = RawConn::open(&serve(dir.path(), true)).await;
        let mut block = version_block(&authority_literal(SOCKET_PATH));
        block.push(0x00);
        block.extend(string("x-large"));
        block.extend(string(&"v".repeat(40_000)));
        let mut frames = Vec::new();
        for (i, chunk) in block.chunks(MAX_FRAME).enumerate() {
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let last = (i + 1) * MAX_FRAME >= block.len();
            frames.push(frame(kind, if last { END_HEADERS } else { 0 }, 1, chunk));
        }
        assert_eq!(frames.len(), 3);
        conn.version_ok(1, frames).await;
    }

    #[tokio::test]
    async fn drops_table_size_updates_once_rewriting() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = RawConn::open(&serve(dir.path(), true)).await;
        let to_zero_and_back = [0x20, 0x3f, 0xe1, 0x1f];
        // Passed through unchanged: h2 applies the update itself.
        let block = [
            &to_zero_and_back[..],
            &version_block(&authority_literal("localhost")),
        ];
        conn.version_ok(1, vec![headers(1, &block.concat())]).await;
        // Rewritten; the path gets indexed at 62.
        let field = [vec![0x41], string(SOCKET_PATH)].concat();
        let block = [&[0x3f, 0xe1, 0x1f][..], &version_block(&field)];
        conn.version_ok(3, vec![headers(3, &block.concat())]).await;
        let block = [&[0x3f, 0xe1, 0x1f][..], &version_block(&[0x80 | 62])];
        conn.version_ok(5, vec![headers(5, &block.concat())]).await;
        let block = [
            &to_zero_and_back[..],
            &version_block(&authority_literal(SOCKET_PATH)),
        ];
        conn.version_ok(7, vec![headers(7, &block.concat())]).await;
    }

    #[tokio::test]
    async fn survives_garbage_after_the_preface() {
        let dir = tempfile::tempdir().unwrap();
        let path = serve(dir.path(), true);
        let mut conn = RawConn::open(&path).await;
        let mut garbage = frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0x7f]);
        garbage.extend(frame(HEADERS, PADDED, 3, &[200, 1, 2]));
        garbage.extend([0xff; 64]);
        let _ = conn.try_send(&[garbage]).await;
        assert!(within(conn.response(1)).await.is_err());
        // The server still serves other connections.
        let mut conn = RawConn::open(&path).await;
        let block = version_block(&authority_literal(SOCKET_PATH));
        conn.version_ok(1, vec![headers(1, &block)]).await;
    }

    #[derive(Clone)]
    struct UdsConnector(PathBuf);

    impl tonic::codegen::Service<Uri> for UdsConnector {
        type Response = TokioIo<UnixStream>;
        type Error = io::Error;
        type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _uri: Uri) -> Self::Future {
            let path = self.0.clone();
            Box::pin(async move { Ok(TokioIo::new(UnixStream::connect(path).await?)) })
        }
    }

    #[tokio::test]
    async fn tonic_client_works_through_the_adapter() {
        let dir = tempfile::tempdir().unwrap();
        let path = serve(dir.path(), true);
        let channel = Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(UdsConnector(path))
            .await
            .unwrap();
        let mut client = CsiDriverProviderClient::new(channel);
        let version = within(client.version(version_request())).await.unwrap();
        assert_eq!(version.into_inner(), expected_version());
        let request = MountRequest {
            attributes: r#"{"objects":"x"}"#.into(),
            ..Default::default()
        };
        let mount = within(client.mount(request)).await.unwrap().into_inner();
        assert_eq!(mount.files[0].contents, br#"{"objects":"x"}"#);
        // Peer credentials still reach the service through `Connected`.
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata(dir.path()).unwrap().uid();
        assert_eq!(mount.object_version[0].version, uid.to_string());
    }

    // ---- the adapter alone -----------------------------------------------------------------

    /// Serves `data` in reads of at most `chunk` bytes, answering Pending before every other one.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
        stall: bool,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.stall = !this.stall;
            if this.stall {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = this
                .chunk
                .min(buf.remaining())
                .min(this.data.len() - this.pos);
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    /// Runs `data` through the adapter, read `read_size` bytes at a time.
    fn adapt(data: &[u8], chunk: usize, read_size: usize) -> io::Result<Vec<u8>> {
        let reader = Chunked {
            data: data.to_vec(),
            pos: 0,
            chunk,
            stall: false,
        };
        let mut fix = AuthorityFix::new(reader);
        futures::executor::block_on(async {
            let mut out = Vec::new();
            let mut buf = vec![0; read_size];
            loop {
                match fix.read(&mut buf).await? {
                    0 => return Ok(out),
                    n => out.extend_from_slice(&buf[..n]),
                }
            }
        })
    }

    #[derive(Debug, PartialEq)]
    enum Seen {
        Headers {
            stream_id: u32,
            end_stream: bool,
            priority: Option<[u8; 5]>,
            fields: Fields,
        },
        Other(Vec<u8>),
    }

    /// Stream, END_STREAM, priority fields and fragment of a block still being read.
    type PendingBlock = (u32, bool, Option<[u8; 5]>, Vec<u8>);

    /// What the server reads from `wire`: header blocks decoded with one fresh decoder, other
    /// frames as bytes. Also checks that frames stay within the default maximum size.
    fn server_view(wire: &[u8]) -> Vec<Seen> {
        assert!(wire.starts_with(PREFACE));
        let mut rest = &wire[PREFACE.len()..];
        let mut decoder = Decoder::new();
        let mut seen = Vec::new();
        let mut pending: Option<PendingBlock> = None;
        while let Some(head) = rest.first_chunk::<FRAME_HEADER_LEN>() {
            let head = FrameHead::parse(head);
            let (whole, after) = rest.split_at(FRAME_HEADER_LEN + head.len);
            let payload = &whole[FRAME_HEADER_LEN..];
            rest = after;
            match head.kind {
                HEADERS => {
                    assert!(pending.is_none());
                    let (priority, fragment) = split_headers_payload(head, payload).unwrap();
                    let end_stream = head.flags & END_STREAM != 0;
                    pending = Some((head.stream_id, end_stream, priority, fragment.to_vec()));
                }
                CONTINUATION => pending.as_mut().unwrap().3.extend_from_slice(payload),
                _ => {
                    assert!(pending.is_none());
                    seen.push(Seen::Other(whole.to_vec()));
                    continue;
                }
            }
            if head.flags & END_HEADERS != 0 {
                let (stream_id, end_stream, priority, block) = pending.take().unwrap();
                seen.push(Seen::Headers {
                    stream_id,
                    end_stream,
                    priority,
                    fields: decoder.decode(&block).unwrap(),
                });
            }
        }
        assert!(rest.is_empty());
        seen
    }

    fn field(name: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
        (name.as_bytes().to_vec(), value.as_bytes().to_vec())
    }

    fn version_fields(authority: &str) -> Fields {
        vec![
            field(":method", "POST"),
            field(":scheme", "http"),
            field(":path", VERSION_PATH),
            field(":authority", authority),
            field("content-type", "application/grpc"),
            field("te", "trailers"),
        ]
    }

    #[test]
    fn good_authorities_pass_byte_for_byte() {
        let mut encoder = Encoder::new();
        let block = encoder.encode(
            version_fields("localhost")
                .iter()
                .map(|(n, v)| (&n[..], &v[..])),
        );
        let (one, two) = block.split_at(7);
        let mut wire = [PREFACE, &frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0])].concat();
        wire.extend(frame(
            HEADERS,
            PADDED | PRIORITY,
            1,
            &[&[4][..], &[0; 5], one, &[0; 4]].concat(),
        ));
        wire.extend(frame(CONTINUATION, END_HEADERS, 1, two));
        wire.extend(grpc_data(1, &version_request()));
        wire.extend(frame(0x8, 0, 0, &[0, 1, 0, 0])); // WINDOW_UPDATE
        let block = encoder.encode(
            version_fields("[::]:50051")
                .iter()
                .map(|(n, v)| (&n[..], &v[..])),
        );
        wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &block));
        wire.extend(frame(DATA, END_STREAM, 5, &vec![7; 40_000]));
        for (chunk, read_size) in [
            (1, 1),
            (5, 3),
            (100, 16),
            (4096, 8192),
            (usize::MAX, 1 << 16),
        ] {
            assert_eq!(
                adapt(&wire, chunk, read_size).unwrap(),
                wire,
                "{chunk}/{read_size}"
            );
        }
    }

    #[test]
    fn anything_but_http2_passes_unchanged() {
        for wire in [
            &b"GET / HTTP/1.1\r\nHost: /var/run/x.sock\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n\x00\x00\x01\x01\x04\x00\x00\x00\x01\x01",
            b"",
            b"PRI",
        ] {
            assert_eq!(adapt(wire, 3, 2).unwrap(), wire);
        }
    }

    #[test]
    fn rewritten_blocks_keep_everything_but_the_authority() {
        let mut wire = PREFACE.to_vec();
        let block = version_block(&[vec![0x41], huffman(SOCKET_PATH)].concat());
        wire.extend(frame(
            HEADERS,
            END_HEADERS | PRIORITY | END_STREAM,
            1,
            &[&[0, 0, 0, 0, 9][..], &block].concat(),
        ));
        let mut block = vec![0x20]; // table size 0: the indexed path is gone
        block.extend(version_block(&authority_literal("localhost:8080")));
        block.push(0x00);
        block.extend(string("x-large"));
        block.extend(string(&"v".repeat(40_000)));
        wire.extend(frame(HEADERS, END_HEADERS, 3, &block));
        let out = adapt(&wire, 1000, 777).unwrap();
        let mut large = version_fields("localhost:8080");
        large.push(field("x-large", &"v".repeat(40_000)));
        assert_eq!(
            server_view(&out),
            [
                Seen::Headers {
                    stream_id: 1,
                    end_stream: true,
                    priority: Some([0, 0, 0, 0, 9]),
                    fields: version_fields("localhost"),
                },
                Seen::Headers {
                    stream_id: 3,
                    end_stream: false,
                    priority: None,
                    fields: large,
                },
            ]
        );
    }

    #[test]
    fn huge_or_broken_frames_pass_raw_before_any_rewrite() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, END_HEADERS, 1, &[]));
        wire.truncate(wire.len() - FRAME_HEADER_LEN);
        wire.extend([0xff, 0xff, 0xff, HEADERS, 0, 0, 0, 0, 1]); // 16 MiB HEADERS frame
        wire.extend([1; 1000]);
        assert_eq!(adapt(&wire, 64, 64).unwrap(), wire);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, END_HEADERS, 1, &[0xbe])); // index 62: not in the table
        wire.extend(headers(3, &version_block(&authority_literal(SOCKET_PATH))));
        assert_eq!(adapt(&wire, 64, 64).unwrap(), wire);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 1, 2]));
        wire.extend(headers(3, &version_block(&authority_literal(SOCKET_PATH))));
        assert_eq!(adapt(&wire, 64, 64).unwrap(), wire);
    }

    #[test]
    fn interrupted_blocks_are_forwarded_raw() {
        let mut wire = PREFACE.to_vec();
        wire.extend(headers(1, &version_block(&authority_literal(SOCKET_PATH))));
        let rewritten = adapt(&wire, 50, 50).unwrap();
        let block = version_block(&authority_literal(SOCKET_PATH));
        let mut tail = frame(HEADERS, 0, 3, &block);
        tail.extend(frame(DATA, 0, 3, b"not a continuation"));
        tail.extend(frame(CONTINUATION, END_HEADERS, 3, b""));
        wire.extend(&tail);
        assert_eq!(adapt(&wire, 50, 50).unwrap(), [rewritten, tail].concat());
    }

    #[test]
    fn undecodable_blocks_after_a_rewrite_fail_the_connection() {
        let mut wire = PREFACE.to_vec();
        wire.extend(headers(1, &version_block(&authority_literal(SOCKET_PATH))));
        wire.extend(headers(3, &[0xbe, 0xff]));
        let error = adapt(&wire, 50, 50).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// A random client session and what the server should read from it after the adapter.
    fn random_session(rng: &mut Rng) -> (Vec<u8>, Vec<Seen>, bool) {
        let authorities = [
            "localhost",
            "[::]:50051",
            SOCKET_PATH,
            "/tmp/a b.sock",
            "",
            "%2Fvar%2Frun%2Fx.sock",
        ];
        let mut encoder = Encoder::new();
        let mut wire = [PREFACE, &frame(SETTINGS, 0, 0, &[])].concat();
        let mut expected = vec![Seen::Other(frame(SETTINGS, 0, 0, &[]))];
        let mut any_bad = false;
        for i in 0..1 + rng.below(6) {
            let stream_id = 2 * i as u32 + 1;
            let authority = authorities[rng.below(authorities.len())];
            let bad = Authority::try_from(authority).is_err();
            any_bad |= bad;
            let mut fields = version_fields(authority);
            for j in 0..rng.below(4) {
                let value = "abc".repeat(rng.below(2000));
                fields.push(field(&format!("x-meta-{j}"), &value));
            }
            let mut block = Vec::new();
            if rng.chance(20) {
                block.extend([0x3f, 0xe1, 0x1f]); // table size 4096 again: no eviction
            }
            if rng.chance(50) {
                let pairs = fields.iter().map(|(n, v)| (&n[..], &v[..]));
                encoder.encode_into(pairs, &mut block).unwrap();
            } else {
                for (name, value) in &fields {
                    block.push(if rng.chance(30) { 0x10 } else { 0x00 });
                    for s in [name, value] {
                        match try_huffman(s).filter(|_| rng.chance(50)) {
                            Some(coded) => block.extend(coded),
                            None => encode_literal_string(&mut block, s),
                        }
                    }
                }
            }
            let end_stream = rng.chance(30);
            let priority = rng.chance(30).then(|| [0, 0, 0, 0, rng.next() as u8]);
            let pad = rng.chance(30).then(|| rng.below(256));
            let mut cuts: Vec<usize> = (0..rng.below(4))
                .map(|_| rng.below(block.len() + 1))
                .collect();
            cuts.sort_unstable();
            cuts.push(block.len());
            let mut start = 0;
            for (k, &cut) in cuts.iter().enumerate() {
                let piece = &block[start..cut];
                start = cut;
                let last = if k + 1 == cuts.len() { END_HEADERS } else { 0 };
                if k > 0 {
                    wire.extend(frame(CONTINUATION, last, stream_id, piece));
                    continue;
                }
                let mut flags = last;
                let mut payload = Vec::new();
                if let Some(pad) = pad {
                    flags |= PADDED;
                    payload.push(pad as u8);
                }
                if let Some(priority) = priority {
                    flags |= PRIORITY;
                    payload.extend(priority);
                }
                payload.extend(piece);
                payload.extend(vec![0; pad.unwrap_or(0)]);
                if end_stream {
                    flags |= END_STREAM;
                }
                wire.extend(frame(HEADERS, flags, stream_id, &payload));
            }
            if bad {
                let value = fields.iter_mut().find(|(n, _)| n == b":authority").unwrap();
                value.1 = b"localhost".to_vec();
            }
            expected.push(Seen::Headers {
                stream_id,
                end_stream,
                priority,
                fields,
            });
            let mut others = Vec::new();
            if !end_stream {
                let len = rng.below(3) * rng.below(20_000);
                let body = rng.bytes(len);
                others.push(frame(DATA, END_STREAM, stream_id, &body));
            }
            if rng.chance(30) {
                others.push(frame(0x6, 0, 0, &rng.bytes(8))); // PING
            }
            if rng.chance(30) {
                others.push(frame(0x8, 0, stream_id, &[0, 0, 1, 0])); // WINDOW_UPDATE
            }
            for other in others {
                wire.extend(&other);
                expected.push(Seen::Other(other));
            }
        }
        (wire, expected, any_bad)
    }

    fn encode_literal_string(out: &mut Vec<u8>, s: &[u8]) {
        encode_integer(out, s.len(), 7, 0x00);
        out.extend_from_slice(s);
    }

    #[test]
    fn random_sessions_reach_the_server_intact() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for round in 0..300 {
            let (wire, expected, any_bad) = random_session(&mut rng);
            let chunk = [1, 9, 100, 5000, usize::MAX][rng.below(5)];
            let read_size = [1, 10, 9000, 1 << 16][rng.below(4)];
            let out = adapt(&wire, chunk, read_size).unwrap();
            if !any_bad {
                assert!(
                    out == wire,
                    "round {round}: changed a session that needed no rewrite"
                );
            }
            assert_eq!(server_view(&out), expected, "round {round}");
        }
    }

    #[test]
    fn never_panics_on_mangled_input() {
        let mut rng = Rng(0xdead_beef_0bad_f00d);
        for _ in 0..800 {
            let (mut wire, _, _) = random_session(&mut rng);
            match rng.below(4) {
                0 => {
                    // Flip some bytes after the preface.
                    for _ in 0..1 + rng.below(8) {
                        let at = PREFACE.len() + rng.below(wire.len() - PREFACE.len());
                        wire[at] = rng.next() as u8;
                    }
                }
                1 => wire.truncate(PREFACE.len() + rng.below(wire.len() - PREFACE.len())),
                2 => {
                    wire.truncate(PREFACE.len());
                    let len = rng.below(5000);
                    wire.extend(rng.bytes(len));
                }
                _ => {
                    // Random frames with plausible types, flags and short payloads.
                    wire.truncate(PREFACE.len());
                    for _ in 0..rng.below(20) {
                        let kind = [HEADERS, CONTINUATION, DATA, SETTINGS][rng.below(4)];
                        let flags = rng.next() as u8;
                        let stream_id = rng.below(4) as u32;
                        let len = rng.below(40);
                        let payload = rng.bytes(len);
                        wire.extend(frame(kind, flags, stream_id, &payload));
                    }
                }
            }
            let chunk = [1, 13, usize::MAX][rng.below(3)];
            let _ = adapt(&wire, chunk, 4096);
        }
    }

    #[test]
    fn encodes_hpack_integers() {
        let mut out = Vec::new();
        encode_integer(&mut out, 1337, 5, 0x20);
        assert_eq!(out, [0x3f, 0x9a, 0x0a]); // RFC 7541 C.1.2
        out.clear();
        encode_integer(&mut out, 127, 7, 0x00);
        assert_eq!(out, [0x7f, 0x00]);
    }
}
