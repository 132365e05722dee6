//! WebSocket frames (RFC 6455): the server's own frame codec, the frame
//! rules it checks, and the reassembly of fragmented messages within their
//! limits.
//!
//! fastwebsockets performs the upgrade handshake, and this module reads and
//! writes the frames after it. fastwebsockets 0.10 gives every connection
//! an 8 KiB read buffer and copies each outgoing frame into a write buffer
//! of its own, which made up most of the memory of an idle connection. It
//! also accepts unmasked client frames, which RFC 6455 section 5.1 requires
//! a server to reject. [`FrameReader`] keeps at most [`READ_CHUNK`] bytes
//! between frames, and [`append_frame`] writes a frame header in front of a
//! payload that the caller then writes in one batch with others.
//!
//! Close frames are checked with [`check_close`], and the 125-byte limit of
//! control frames applies to close, ping and pong alike.

use fastwebsockets::OpCode;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::session::{CLOSE_INVALID_UTF8, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG};

/// Largest payload of a control frame (close, ping, pong), in bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Bytes the reader requests from the socket at a time while it waits for a
/// frame. Once every byte read has been parsed and no burst is arriving,
/// the reader keeps at most this much allocated, which is therefore the
/// read memory of an idle connection.
pub const READ_CHUNK: usize = 512;

/// Bytes the reader requests at a time while the client sends faster than
/// it reads, that is after a read filled all the space it offered.
pub const BURST_READ_CHUNK: usize = 16 * 1024;

/// Why [`FrameReader::read_frame`] ended the connection.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the TCP stream or it failed; nothing can be sent back.
    #[error("socket read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke a frame rule. The value is the close code to send:
    /// 1002 for a malformed frame, 1009 for one over the size limit.
    #[error("client frame rejected with close code {0}")]
    Protocol(u16),
}

/// One frame from the client, unmasked. The payload borrows the reader's
/// buffer until the next read.
#[derive(Debug)]
pub struct ClientFrame<'a> {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: &'a [u8],
}

/// Reads and checks client frames from a stream.
///
/// It rejects with 1002: nonzero reserved bits (no extension is
/// negotiated), unknown opcodes, unmasked frames, fragmented or over-125-byte
/// control frames and a 64-bit length with its top bit set. It rejects a
/// payload over `max_payload` bytes with 1009 before reading it.
pub struct FrameReader<R> {
    stream: R,
    /// Bytes read from the stream; `buffer[start..]` are not yet parsed.
    buffer: Vec<u8>,
    /// Offset of the first unparsed byte in `buffer`.
    start: usize,
    /// Largest payload of one frame, in bytes.
    max_payload: usize,
    /// Whether the last read filled all the space it offered, so that more
    /// bytes are likely waiting in the socket. The buffer is kept while set.
    busy: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(stream: R, max_payload: usize) -> Self {
        FrameReader {
            stream,
            buffer: Vec::new(),
            start: 0,
            max_payload,
            busy: false,
        }
    }

    /// Reads the next frame. Cancellation-safe: bytes read before the
    /// future is dropped stay buffered, and the next call parses the frame
    /// from its first byte again.
    pub async fn read_frame(&mut self) -> Result<ClientFrame<'_>, ReadError> {
        self.release_parsed();
        self.fill(2).await?;
        let first = self.buffer[self.start];
        let second = self.buffer[self.start + 1];
        let fin = first & 0x80 != 0;
        if first & 0x70 != 0 {
            return Err(ReadError::Protocol(CLOSE_PROTOCOL_ERROR));
        }
        let opcode = opcode_of(first & 0x0F).ok_or(ReadError::Protocol(CLOSE_PROTOCOL_ERROR))?;
        if second & 0x80 == 0 {
            return Err(ReadError::Protocol(CLOSE_PROTOCOL_ERROR));
        }

        let length_bytes = match second & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header_len = 2 + length_bytes + 4;
        self.fill(header_len).await?;
        let header = &self.buffer[self.start..self.start + header_len];
        let length = payload_length(second & 0x7F, &header[2..2 + length_bytes])?;
        check_length(fin, opcode, length, self.max_payload)?;
        let mask = [header[header_len - 4], header[header_len - 3], header[header_len - 2], header[header_len - 1]];

        // The check above bounds `length` by `max_payload`, a usize.
        let length = length as usize;
        self.fill(header_len + length).await?;
        let payload_start = self.start + header_len;
        self.start = payload_start + length;
        let payload = &mut self.buffer[payload_start..payload_start + length];
        unmask(payload, mask);
        Ok(ClientFrame { fin, opcode, payload })
    }

    /// Drops the parsed bytes. When nothing unparsed is left and the client
    /// is not sending a burst, a buffer that grew past [`READ_CHUNK`] is freed.
    fn release_parsed(&mut self) {
        if self.start < self.buffer.len() {
            return;
        }
        self.start = 0;
        if !self.busy && self.buffer.capacity() > READ_CHUNK {
            self.buffer = Vec::new();
        } else {
            self.buffer.clear();
        }
    }

    /// Reads until at least `needed` unparsed bytes are buffered.
    async fn fill(&mut self, needed: usize) -> Result<(), ReadError> {
        while self.buffer.len() - self.start < needed {
            if self.start > 0 {
                self.buffer.drain(..self.start);
                self.start = 0;
            }
            let missing = needed - self.buffer.len();
            // The buffer grows with the bytes that arrive, not with the
            // length a header declares, so a header alone costs one chunk.
            let chunk = if self.busy { BURST_READ_CHUNK } else { READ_CHUNK };
            self.buffer.reserve(missing.min(chunk).max(READ_CHUNK));
            let offered = self.buffer.capacity() - self.buffer.len();
            let read = self.stream.read_buf(&mut self.buffer).await?;
            if read == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            self.busy = read == offered;
        }
        Ok(())
    }
}

fn opcode_of(bits: u8) -> Option<OpCode> {
    match bits {
        0x0 => Some(OpCode::Continuation),
        0x1 => Some(OpCode::Text),
        0x2 => Some(OpCode::Binary),
        0x8 => Some(OpCode::Close),
        0x9 => Some(OpCode::Ping),
        0xA => Some(OpCode::Pong),
        _ => None,
    }
}

fn is_control(opcode: OpCode) -> bool {
    matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong)
}

/// Decodes the payload length from the 7-bit code and the extended length bytes.
fn payload_length(code: u8, extended: &[u8]) -> Result<u64, ReadError> {
    let length = match *extended {
        [] => u64::from(code),
        [high, low] => u64::from(u16::from_be_bytes([high, low])),
        _ => {
            let bytes: [u8; 8] = extended.try_into().map_err(|_| ReadError::Protocol(CLOSE_PROTOCOL_ERROR))?;
            u64::from_be_bytes(bytes)
        }
    };
    // RFC 6455 section 5.2: the most significant bit of a 64-bit length must be 0.
    if length >> 63 != 0 {
        return Err(ReadError::Protocol(CLOSE_PROTOCOL_ERROR));
    }
    Ok(length)
}

fn check_length(fin: bool, opcode: OpCode, length: u64, max_payload: usize) -> Result<(), ReadError> {
    if is_control(opcode) && (!fin || length > MAX_CONTROL_PAYLOAD as u64) {
        return Err(ReadError::Protocol(CLOSE_PROTOCOL_ERROR));
    }
    if length > max_payload as u64 {
        return Err(ReadError::Protocol(CLOSE_TOO_BIG));
    }
    Ok(())
}

/// XORs `payload` with the 4-byte masking key, as RFC 6455 section 5.3 defines.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (index, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[index];
    }
}

/// Appends one unmasked, unfragmented server frame to `out`: the header,
/// then `payload`.
pub fn append_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    out.push(0x80 | opcode as u8);
    let length = payload.len();
    if length < 126 {
        out.push(length as u8);
    } else if let Ok(short) = u16::try_from(length) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(length as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Appends a server close frame to `out`: the status code, if any, then
/// `reason`, which RFC 6455 allows only after a code.
pub fn append_close_frame(out: &mut Vec<u8>, code: Option<u16>, reason: &str) {
    let mut payload = Vec::with_capacity(2 + reason.len());
    if let Some(code) = code {
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
    }
    append_frame(out, OpCode::Close, &payload);
}

/// Returns whether a peer may send `code` in a close frame. These are the
/// codes that RFC 6455 and the IANA registry define for the wire (1000 to
/// 1003, 1007 to 1014) and the ranges for libraries and applications (3000
/// to 4999). 1004, 1005, 1006 and 1015 are reserved or only reported locally.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Checks the payload of a client's close frame. Returns the status code
/// to echo (`None` for an empty payload), or the code to close with: 1002
/// for a one-byte payload or a code that may not be sent, 1007 for a reason
/// that is not UTF-8. The caller checks the 125-byte limit first.
pub fn check_close(payload: &[u8]) -> Result<Option<u16>, u16> {
    match payload {
        [] => Ok(None),
        [_] => Err(CLOSE_PROTOCOL_ERROR),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !close_code_allowed(code) {
                return Err(CLOSE_PROTOCOL_ERROR);
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(CLOSE_INVALID_UTF8);
            }
            Ok(Some(code))
        }
    }
}

/// A message being assembled from fragments.
#[derive(Debug)]
struct Partial {
    opcode: OpCode,
    bytes: Vec<u8>,
    fragments: usize,
}

/// Joins data frames into messages, at most `max_bytes` in all fragments
/// together and at most `max_fragments` frames per message.
#[derive(Debug)]
pub struct Reassembler {
    max_bytes: usize,
    max_fragments: usize,
    partial: Option<Partial>,
}

impl Reassembler {
    pub fn new(max_bytes: usize, max_fragments: usize) -> Self {
        Reassembler {
            max_bytes,
            max_fragments,
            partial: None,
        }
    }

    /// Returns whether a fragmented message has started and not yet ended.
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }

    /// Adds a text, binary or continuation frame. Returns the complete
    /// message once a frame has FIN set, or `None` while fragments are
    /// missing. The error is the close code: 1002 for a continuation with
    /// nothing to continue, or a new message before the last one ended, and
    /// 1009 for a message over either limit.
    pub fn push(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) -> Result<Option<(OpCode, Vec<u8>)>, u16> {
        let mut partial = match (opcode, self.partial.take()) {
            (OpCode::Text | OpCode::Binary, None) => Partial {
                opcode,
                bytes: Vec::new(),
                fragments: 0,
            },
            (OpCode::Continuation, Some(partial)) => partial,
            _ => return Err(CLOSE_PROTOCOL_ERROR),
        };
        partial.fragments += 1;
        if partial.bytes.len() + payload.len() > self.max_bytes || partial.fragments > self.max_fragments {
            return Err(CLOSE_TOO_BIG);
        }
        partial.bytes.extend_from_slice(payload);
        if fin {
            return Ok(Some((partial.opcode, partial.bytes)));
        }
        self.partial = Some(partial);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_on_the_wire() {
        for code in [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert!(close_code_allowed(code), "{code} may be sent");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert!(!close_code_allowed(code), "{code} may not be sent");
        }
    }

    #[test]
    fn check_close_cases() {
        assert_eq!(check_close(&[]), Ok(None));
        assert_eq!(check_close(&[0x03]), Err(CLOSE_PROTOCOL_ERROR));
        assert_eq!(check_close(&[0x03, 0xE8, b'o', b'k']), Ok(Some(1000)));
        assert_eq!(check_close(&[0x03, 0xED]), Err(CLOSE_PROTOCOL_ERROR));
        assert_eq!(check_close(&[0x03, 0xE8, 0xFF]), Err(CLOSE_INVALID_UTF8));
    }

    #[test]
    fn reassembler_counts_fragments() {
        let mut reassembler = Reassembler::new(1000, 3);
        assert_eq!(reassembler.push(false, OpCode::Text, b"a"), Ok(None));
        assert_eq!(reassembler.push(false, OpCode::Continuation, b"b"), Ok(None));
        assert_eq!(reassembler.push(false, OpCode::Continuation, b"c"), Ok(None));
        assert_eq!(reassembler.push(true, OpCode::Continuation, b"d"), Err(CLOSE_TOO_BIG));
    }

    #[test]
    fn reassembler_joins_fragments() {
        let mut reassembler = Reassembler::new(1000, 3);
        reassembler.push(false, OpCode::Text, b"he").unwrap();
        let message = reassembler.push(true, OpCode::Continuation, b"llo").unwrap();
        assert_eq!(message, Some((OpCode::Text, b"hello".to_vec())));
        assert!(!reassembler.in_progress());
    }

    /// Encodes a masked client frame, as a browser sends it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            length if length < 126 => frame.push(0x80 | length as u8),
            length if length <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(length as u16).to_be_bytes());
            }
            length => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(length as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(index, byte)| byte ^ mask[index % 4]));
        frame
    }

    async fn read_one(bytes: Vec<u8>, max_payload: usize) -> Result<(bool, OpCode, Vec<u8>), u16> {
        let mut reader = FrameReader::new(&bytes[..], max_payload);
        match reader.read_frame().await {
            Ok(frame) => Ok((frame.fin, frame.opcode, frame.payload.to_vec())),
            Err(ReadError::Protocol(code)) => Err(code),
            Err(ReadError::Io(error)) => panic!("unexpected read error: {error}"),
        }
    }

    #[tokio::test]
    async fn reader_unmasks_every_length_form() {
        for length in [0, 1, 5, 125, 126, 1000, 65535, 65536, 70001] {
            let payload: Vec<u8> = (0..length).map(|index| (index % 251) as u8).collect();
            let frame = client_frame(true, 0x1, &payload, [0x12, 0x34, 0x56, 0x78]);
            let read = read_one(frame, 100_000).await;
            assert_eq!(read, Ok((true, OpCode::Text, payload)), "payload of {length} bytes");
        }
    }

    #[tokio::test]
    async fn reader_rejects_unmasked_frame() {
        let mut frame = client_frame(true, 0x1, b"hi", [0; 4]);
        frame[1] &= 0x7F;
        frame.truncate(2);
        frame.extend_from_slice(b"hi");
        assert_eq!(read_one(frame, 100).await, Err(CLOSE_PROTOCOL_ERROR));
    }

    #[tokio::test]
    async fn reader_rejects_length_with_top_bit() {
        let mut frame = vec![0x81, 0x80 | 127];
        frame.extend_from_slice(&(1u64 << 63).to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        assert_eq!(read_one(frame, usize::MAX).await, Err(CLOSE_PROTOCOL_ERROR));
    }

    #[tokio::test]
    async fn reader_rejects_payload_over_limit_before_reading_it() {
        let mut frame = vec![0x81, 0x80 | 127];
        frame.extend_from_slice(&(1u64 << 40).to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        assert_eq!(read_one(frame, 4096).await, Err(CLOSE_TOO_BIG));
    }

    #[tokio::test]
    async fn reader_checks_control_frames() {
        let fragmented_ping = client_frame(false, 0x9, b"", [1, 2, 3, 4]);
        assert_eq!(read_one(fragmented_ping, 4096).await, Err(CLOSE_PROTOCOL_ERROR), "fragmented ping");
        let long_pong = client_frame(true, 0xA, &[0; 126], [1, 2, 3, 4]);
        assert_eq!(read_one(long_pong, 4096).await, Err(CLOSE_PROTOCOL_ERROR), "pong over 125 bytes");
        let close = client_frame(true, 0x8, &[0; 125], [1, 2, 3, 4]);
        assert!(read_one(close, 4096).await.is_ok(), "close of 125 bytes");
    }

    #[tokio::test]
    async fn reader_reports_end_of_stream() {
        let frame = client_frame(true, 0x1, b"hello", [1, 2, 3, 4]);
        let mut reader = FrameReader::new(&frame[..frame.len() - 1], 4096);
        assert!(matches!(reader.read_frame().await, Err(ReadError::Io(_))));
    }

    #[tokio::test]
    async fn reader_frees_large_buffer_when_idle() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut reader = FrameReader::new(server, 1 << 20);
        let large = vec![b'x'; 200_000];
        tokio::io::AsyncWriteExt::write_all(&mut client, &client_frame(true, 0x1, &large, [9, 8, 7, 6])).await.unwrap();
        assert_eq!(reader.read_frame().await.unwrap().payload.len(), large.len());

        tokio::io::AsyncWriteExt::write_all(&mut client, &client_frame(true, 0x1, b"small", [9, 8, 7, 6])).await.unwrap();
        assert_eq!(reader.read_frame().await.unwrap().payload, b"small");
        // Poll once: the reader is now waiting for the next frame.
        let waiting = futures_util::FutureExt::now_or_never(reader.read_frame()).is_none();
        assert!(waiting, "no third frame was sent");
        assert!(
            reader.buffer.capacity() <= READ_CHUNK,
            "while waiting for a frame the buffer holds {} bytes",
            reader.buffer.capacity()
        );
    }

    #[tokio::test]
    async fn reader_memory_follows_arrived_bytes() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut reader = FrameReader::new(server, 1 << 20);
        let frame = client_frame(true, 0x1, &vec![b'x'; 65_536], [1, 2, 3, 4]);
        // Only the header and its mask arrive.
        tokio::io::AsyncWriteExt::write_all(&mut client, &frame[..14]).await.unwrap();
        let waiting = futures_util::FutureExt::now_or_never(reader.read_frame()).is_none();
        assert!(waiting, "the payload has not arrived");
        assert!(
            reader.buffer.capacity() <= 4 * READ_CHUNK,
            "a header declaring 65,536 bytes made the buffer hold {} bytes",
            reader.buffer.capacity()
        );

        tokio::io::AsyncWriteExt::write_all(&mut client, &frame[14..]).await.unwrap();
        assert_eq!(reader.read_frame().await.unwrap().payload.len(), 65_536, "the frame is read once it arrives");
    }

    #[tokio::test]
    async fn reader_keeps_frames_read_together() {
        let mut bytes = Vec::new();
        for index in 0..50u8 {
            bytes.extend(client_frame(true, 0x1, &[index; 300], [index, 1, 2, 3]));
        }
        let mut reader = FrameReader::new(&bytes[..], 4096);
        for index in 0..50u8 {
            let frame = reader.read_frame().await.unwrap();
            assert_eq!(frame.payload, &[index; 300][..], "frame {index}");
        }
    }

    #[test]
    fn append_close_frame_payloads() {
        let mut out = Vec::new();
        append_close_frame(&mut out, None, "ignored");
        assert_eq!(out, [0x88, 0], "a close without a code has an empty payload");

        let mut out = Vec::new();
        append_close_frame(&mut out, Some(1001), "bye");
        assert_eq!(out, [0x88, 5, 0x03, 0xE9, b'b', b'y', b'e'], "the code comes first, then the reason");
    }

    #[test]
    fn append_frame_length_forms() {
        for (length, header) in [(5usize, 2usize), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let mut out = Vec::new();
            append_frame(&mut out, OpCode::Text, &vec![b'a'; length]);
            assert_eq!(out.len(), header + length, "frame with a payload of {length} bytes");
            assert_eq!(out[0], 0x81, "FIN and text opcode for {length} bytes");
        }
    }

    #[test]
    fn reassembler_rejects_interleaved_message() {
        let mut reassembler = Reassembler::new(1000, 3);
        reassembler.push(false, OpCode::Text, b"he").unwrap();
        assert_eq!(reassembler.push(true, OpCode::Text, b"x"), Err(CLOSE_PROTOCOL_ERROR));
    }
}
