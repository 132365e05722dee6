//! WebSocket frame rules (RFC 6455) that the session checks itself, and
//! the reassembly of fragmented messages within their limits.
//!
//! fastwebsockets 0.10 rejects fragmented control frames, pings over 125
//! bytes, nonzero reserved bits, unknown opcodes and unfragmented text
//! frames with invalid UTF-8. It does not check the size of close and pong
//! frames, and its auto-close echoes a close frame of any length. For an
//! invalid close code, auto-close returns an error and also queues a 1002
//! close frame of its own, so two close frames race for the wire. The
//! session therefore turns auto-close off and checks close frames with
//! [`check_close`].

use fastwebsockets::OpCode;

use crate::session::{CLOSE_INVALID_UTF8, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG};

/// Largest payload of a control frame (close, ping, pong), in bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

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

    #[test]
    fn reassembler_rejects_interleaved_message() {
        let mut reassembler = Reassembler::new(1000, 3);
        reassembler.push(false, OpCode::Text, b"he").unwrap();
        assert_eq!(reassembler.push(true, OpCode::Text, b"x"), Err(CLOSE_PROTOCOL_ERROR));
    }
}
