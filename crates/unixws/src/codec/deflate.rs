//! permessage-deflate (RFC 7692): the negotiation, sans-IO, and the
//! per-connection compressor and decompressor.
//!
//! Why `flate2` on the `zlib-rs` backend: it is zlib's format and API
//! (raw deflate, `Z_SYNC_FLUSH`, window sizes 9–15, which the extension's
//! `*_max_window_bits` parameters need and `miniz_oxide` does not offer
//! for compression), in Rust, with no C toolchain, and as fast as zlib-ng.
//! flate2 builds zlib-rs without its `std` feature, and so without run-time
//! CPU detection (scalar code where the CPU has AVX2); unixws turns it on.
//!
//! What a connection holds: a compressor reserves about 256 KiB (zlib's
//! window and hash tables at window 15) and a decompressor about 40 KiB,
//! of which only the pages used are resident (24 KiB per idle connection
//! after one small message each way; BENCHMARKS.md). Both are made on
//! first use. With context takeover (the default, better
//! compression) they live as long as the connection; when the side that
//! owns one may not take its context over (`*_no_context_takeover`), it is
//! dropped after each message, so an idle connection holds nothing.
//!
//! Inflating is bounded: the output may not pass `max_message_size`, and
//! a message that would is refused (1009) as soon as it does, without
//! inflating the rest (a "decompression bomb").

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::CodecError;

/// The extension's name in `Sec-WebSocket-Extensions`.
pub(crate) const NAME: &str = "permessage-deflate";

/// What the two sides agreed on, from one side's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// Our compressor resets after each message.
    pub(crate) we_reset: bool,
    /// Our compressor's window (9–15).
    pub(crate) our_window: u8,
    /// The peer's compressor resets after each message (so our
    /// decompressor may, too).
    pub(crate) peer_resets: bool,
}

/// The parameters of one offer or answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    /// `Some(None)`: present without a value (allowed in a client's offer
    /// for `client_max_window_bits` only).
    server_max_window_bits: Option<Option<u8>>,
    client_max_window_bits: Option<Option<u8>>,
}

/// Parses `permessage-deflate; a; b=9` elements of a header value:
/// each element of our extension, with its parameters; other extensions
/// are skipped (`None` in the list, for the client's check).
fn parse(value: &str) -> Vec<Option<Result<Params, String>>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|element| {
            let mut parts = element.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            if !name.eq_ignore_ascii_case(NAME) {
                return None;
            }
            Some(parse_params(parts))
        })
        .collect()
}

fn parse_params<'a>(parts: impl Iterator<Item = &'a str>) -> Result<Params, String> {
    let mut p = Params::default();
    for part in parts.filter(|p| !p.is_empty()) {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
            None => (part, None),
        };
        let bits = |v: Option<&str>| -> Result<Option<u8>, String> {
            match v {
                None => Ok(None),
                Some(v) => match v.parse::<u8>() {
                    Ok(n) if (8..=15).contains(&n) && !v.starts_with('0') => Ok(Some(n)),
                    _ => Err(format!("`{key}={v}`: window bits must be 8 to 15")),
                },
            }
        };
        let duplicate = || Err(format!("`{key}` appears twice"));
        match key.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" if value.is_some() => {
                return Err(format!("`{key}` takes no value"));
            }
            "server_no_context_takeover" => {
                if p.server_no_context_takeover {
                    return duplicate();
                }
                p.server_no_context_takeover = true;
            }
            "client_no_context_takeover" => {
                if p.client_no_context_takeover {
                    return duplicate();
                }
                p.client_no_context_takeover = true;
            }
            "server_max_window_bits" => {
                if p.server_max_window_bits.is_some() {
                    return duplicate();
                }
                p.server_max_window_bits = Some(bits(value)?);
            }
            "client_max_window_bits" => {
                if p.client_max_window_bits.is_some() {
                    return duplicate();
                }
                p.client_max_window_bits = Some(bits(value)?);
            }
            other => return Err(format!("unknown parameter `{other}`")),
        }
    }
    Ok(p)
}

/// What a client offers: the extension, and that the server may choose
/// our window (`client_max_window_bits`).
pub(crate) const CLIENT_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// The server's side: the first offer in `values` (the request's
/// `Sec-WebSocket-Extensions` headers) it can accept, and the answer for
/// the response header. Offers that are malformed or ask for what zlib
/// cannot do (a server window of 8) are declined, as RFC 7692 says; so is
/// everything when none is acceptable.
pub(crate) fn server_accept<'a>(values: impl Iterator<Item = &'a str>) -> Option<(Agreed, String)> {
    for offer in values.flat_map(parse).flatten() {
        let Ok(p) = offer else {
            tracing::debug!(offer = ?offer, "declined a malformed permessage-deflate offer");
            continue;
        };
        let our_window = match p.server_max_window_bits {
            None => 15,
            Some(Some(n)) if n >= 9 => n,
            // A value is required in an offer; 8 is below zlib's least.
            Some(_) => continue,
        };
        let mut answer = NAME.to_string();
        if p.server_no_context_takeover {
            answer.push_str("; server_no_context_takeover");
        }
        if p.client_no_context_takeover {
            answer.push_str("; client_no_context_takeover");
        }
        if p.server_max_window_bits.is_some() {
            answer.push_str(&format!("; server_max_window_bits={our_window}"));
        }
        return Some((
            Agreed {
                we_reset: p.server_no_context_takeover,
                our_window,
                peer_resets: p.client_no_context_takeover,
            },
            answer,
        ));
    }
    None
}

/// The client's side: what the server's answer (its response's
/// `Sec-WebSocket-Extensions` headers) agreed to. `Ok(None)`: no
/// compression. An answer we did not offer, or a malformed one, fails the
/// handshake (RFC 6455 4.1, RFC 7692 5).
pub(crate) fn client_agreed<'a>(
    offered: bool,
    values: impl Iterator<Item = &'a str>,
) -> Result<Option<Agreed>, String> {
    let mut agreed = None;
    for value in values {
        for element in parse(value) {
            let Some(p) = element else {
                return Err(format!(
                    "the server answered with an extension that was not offered (`{value}`)"
                ));
            };
            let p = p.map_err(|e| format!("the server's permessage-deflate answer: {e}"))?;
            if !offered {
                return Err(
                    "the server answered with permessage-deflate, which was not offered".into(),
                );
            }
            if agreed.is_some() {
                return Err("the server answered with permessage-deflate twice".into());
            }
            if p.server_max_window_bits == Some(None) || p.client_max_window_bits == Some(None) {
                return Err("the server answered with a window size without a value".into());
            }
            // (A value-less client_max_window_bits was refused just above.)
            let our_window = match p.client_max_window_bits.flatten() {
                None => 15,
                Some(8) => return Err(
                    "the server asked for a window of 8 bits, smaller than zlib can compress with"
                        .into(),
                ),
                Some(n) => n,
            };
            agreed = Some(Agreed {
                we_reset: p.client_no_context_takeover,
                our_window,
                peer_resets: p.server_no_context_takeover,
            });
        }
    }
    Ok(agreed)
}

/// The tail a sync flush ends with, which the wire leaves out.
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// A connection's permessage-deflate state (see the module doc).
#[derive(Debug)]
pub(crate) struct Deflate {
    agreed: Agreed,
    /// Messages smaller than this go out uncompressed.
    threshold: usize,
    compress: Option<Box<Compress>>,
    decompress: Option<Box<Decompress>>,
}

impl Deflate {
    pub(crate) fn new(agreed: Agreed, threshold: usize) -> Self {
        Self {
            agreed,
            threshold,
            compress: None,
            decompress: None,
        }
    }

    /// Whether a message of `len` bytes goes out compressed.
    pub(crate) fn wants(&self, len: usize) -> bool {
        len >= self.threshold
    }

    /// One message's payload, compressed (the sync flush's tail removed).
    pub(crate) fn compress(&mut self, payload: &[u8]) -> Bytes {
        let window = self.agreed.our_window;
        let c = self.compress.get_or_insert_with(|| {
            Box::new(Compress::new_with_window_bits(
                Compression::fast(),
                false,
                window,
            ))
        });
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        let mut input = payload;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let before = c.total_in();
            // Compressing into memory cannot fail: the stream is ours.
            let _ = c.compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(c.total_in() - before) as usize..];
            // zlib has flushed everything once it leaves output room.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.is_empty() {
            // An empty message is one empty block.
            out.push(0);
        }
        if self.agreed.we_reset {
            self.compress = None;
        }
        Bytes::from(out)
    }

    /// One message's compressed payload, inflated, at most `max` bytes.
    pub(crate) fn decompress(
        &mut self,
        payload: &[u8],
        max: usize,
    ) -> Result<BytesMut, CodecError> {
        let result = self.inflate(payload, max);
        if result.is_err() || self.agreed.peer_resets {
            self.decompress = None;
        }
        result
    }

    fn inflate(&mut self, payload: &[u8], max: usize) -> Result<BytesMut, CodecError> {
        let d = self
            .decompress
            .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, 15)));
        let invalid = || CodecError::Protocol("invalid deflate data");
        let mut out = BytesMut::new();
        let mut input: &[u8] = payload;
        let mut tail_fed = false;
        loop {
            // Never more room than one byte past the limit: a bomb is
            // caught within a chunk of crossing it.
            let room = (16 << 10).min(max + 1 - out.len().min(max + 1)).max(1);
            let len = out.len();
            out.resize(len + room, 0);
            let (in_before, out_before) = (d.total_in(), d.total_out());
            let status = d.decompress(input, &mut out[len..], FlushDecompress::Sync);
            let produced = (d.total_out() - out_before) as usize;
            let consumed = (d.total_in() - in_before) as usize;
            out.truncate(len + produced);
            input = &input[consumed..];
            if out.len() > max {
                return Err(CodecError::TooBig {
                    size: out.len(),
                    max,
                });
            }
            match status {
                Err(_) => return Err(invalid()),
                Ok(Status::StreamEnd) => {
                    // The peer ended with a final block (allowed): the
                    // next message starts a new stream.
                    d.reset(false);
                    return Ok(out);
                }
                Ok(_) => {}
            }
            if input.is_empty() {
                if !tail_fed {
                    input = &TAIL;
                    tail_fed = true;
                } else if produced < room {
                    return Ok(out);
                }
            } else if consumed == 0 && produced == 0 {
                return Err(invalid());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_accepts_the_first_offer_it_can_and_says_what_it_agreed() {
        let (agreed, answer) = server_accept(
            ["x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=8, permessage-deflate; server_no_context_takeover; client_max_window_bits"].into_iter(),
        )
        .expect("the second offer");
        assert_eq!(answer, "permessage-deflate; server_no_context_takeover");
        assert_eq!(
            agreed,
            Agreed {
                we_reset: true,
                our_window: 15,
                peer_resets: false
            }
        );
        let (agreed, answer) = server_accept(
            ["permessage-deflate; server_max_window_bits=10; client_no_context_takeover"]
                .into_iter(),
        )
        .expect("accepted");
        assert_eq!(
            answer,
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=10"
        );
        assert_eq!((agreed.our_window, agreed.peer_resets), (10, true));
    }

    #[test]
    fn a_server_declines_malformed_offers() {
        for bad in [
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; mystery",
        ] {
            assert_eq!(server_accept([bad].into_iter()), None, "{bad}");
        }
    }

    #[test]
    fn a_client_fails_on_answers_it_did_not_offer_or_cannot_read() {
        assert_eq!(client_agreed(true, std::iter::empty()), Ok(None));
        assert_eq!(
            client_agreed(
                true,
                ["permessage-deflate; server_no_context_takeover"].into_iter()
            ),
            Ok(Some(Agreed {
                we_reset: false,
                our_window: 15,
                peer_resets: true
            }))
        );
        assert_eq!(
            client_agreed(
                true,
                ["permessage-deflate; client_max_window_bits=10"].into_iter()
            )
            .map(|a| a.map(|a| a.our_window)),
            Ok(Some(10))
        );
        for bad in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=8",
            "permessage-deflate, permessage-deflate",
            "x-unknown",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; bogus=1",
        ] {
            assert!(client_agreed(true, [bad].into_iter()).is_err(), "{bad}");
        }
        assert!(client_agreed(false, ["permessage-deflate"].into_iter()).is_err());
    }

    fn pair(agreed: Agreed) -> (Deflate, Deflate) {
        (Deflate::new(agreed, 0), Deflate::new(agreed, 0))
    }

    #[test]
    fn messages_round_trip_with_and_without_context_takeover() {
        for reset in [false, true] {
            let agreed = Agreed {
                we_reset: reset,
                our_window: 15,
                peer_resets: reset,
            };
            let (mut tx, mut rx) = pair(agreed);
            let json = br#"{"user":"alice","action":"update","fields":{"a":1,"b":2}}"#.repeat(50);
            for message in [&json[..], b"", b"x", &json[..]] {
                let wire = tx.compress(message);
                assert!(wire.len() < message.len().max(2) || message.len() < 8);
                let back = rx.decompress(&wire, 1 << 20).expect("inflates");
                assert_eq!(&back[..], message);
            }
            assert_eq!(tx.compress.is_none(), reset, "dropped after each message");
            assert_eq!(rx.decompress.is_none(), reset);
        }
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        let (mut tx, mut rx) = pair(Agreed {
            we_reset: false,
            our_window: 15,
            peer_resets: false,
        });
        let bomb = tx.compress(&vec![0u8; 8 << 20]);
        assert!(bomb.len() < 128 << 10, "{} bytes", bomb.len());
        match rx.decompress(&bomb, 1 << 20) {
            Err(CodecError::TooBig { size, max }) => {
                assert_eq!(max, 1 << 20);
                assert!(
                    size <= (2 << 20) + 64,
                    "stopped near the limit, not at {size}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_invalid_deflate_data() {
        let (_, mut rx) = pair(Agreed {
            we_reset: false,
            our_window: 15,
            peer_resets: false,
        });
        assert_eq!(
            rx.decompress(&[0xff, 0xff, 0xff, 0x00, 0x13], 1 << 20),
            Err(CodecError::Protocol("invalid deflate data"))
        );
    }
}
