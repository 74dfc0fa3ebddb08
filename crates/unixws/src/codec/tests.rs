//! The codec driven in memory: frames encoded with [`Outgoing`], fed to a
//! [`Decoder`] whole and one byte at a time.

use std::io::IoSlice;

use bytes::{Bytes, BytesMut};
use tungstenite::protocol::Role;
use tungstenite::Message;

use super::decode::Forward;
use super::encode::MAX_SLICES;
use super::{CodecError, Decoder, OpCode, Outgoing};

const KEY: [u8; 4] = [0xa1, 0xb2, 0xc3, 0xd4];

/// What `out` holds, as one byte string (taken out).
pub(crate) fn drain(out: &mut Outgoing) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
    let n = out.slices(&mut slices);
    for s in &slices[..n] {
        bytes.extend_from_slice(s);
    }
    out.advance(bytes.len());
    assert!(out.is_empty());
    bytes
}

/// A client frame (masked), as a server receives it.
pub(crate) fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let first = if fin { crate::frame::FIN } else { 0 } | opcode;
    crate::frame::encode(first, payload, Some(KEY))
}

fn server() -> Decoder {
    Decoder::new(Role::Server, 1 << 20, 1 << 20)
}

/// Every message in `bytes`, fed in pieces of `step` bytes.
fn decode_all(
    decoder: &mut Decoder,
    bytes: &[u8],
    step: usize,
) -> Result<Vec<Message>, CodecError> {
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    for piece in bytes.chunks(step) {
        buf.extend_from_slice(piece);
        while let Some(m) = decoder.decode(&mut buf)? {
            messages.push(m);
        }
    }
    assert!(buf.is_empty(), "bytes left over: {buf:?}");
    Ok(messages)
}

#[test]
fn messages_round_trip_whole_and_byte_by_byte_both_ways() {
    let big = Bytes::from(vec![7u8; 70_000]);
    for (role, key) in [(Role::Server, Some(KEY)), (Role::Client, None)] {
        let mut out = Outgoing::default();
        out.push_frame(true, OpCode::Text, "héllo".as_bytes(), key);
        out.push_shared(true, OpCode::Binary, &big, key);
        out.push_frame(true, OpCode::Ping, b"p", key);
        out.push_frame(true, OpCode::Pong, b"", key);
        out.push_frame(true, OpCode::Binary, b"", key);
        out.push_frame(true, OpCode::Close, &[0x03, 0xe8, b'b', b'y', b'e'], key);
        let bytes = drain(&mut out);
        for step in [bytes.len(), 1, 3, 1000] {
            let mut decoder = Decoder::new(role, 1 << 20, 1 << 20);
            let messages = decode_all(&mut decoder, &bytes, step).unwrap();
            assert_eq!(messages.len(), 6);
            assert_eq!(messages[0], Message::text("héllo"));
            assert_eq!(messages[1], Message::Binary(big.clone()));
            assert_eq!(messages[2], Message::Ping(Bytes::from_static(b"p")));
            assert_eq!(messages[3], Message::Pong(Bytes::new()));
            assert_eq!(messages[4], Message::Binary(Bytes::new()));
            let Message::Close(Some(close)) = &messages[5] else {
                panic!("not a close: {:?}", messages[5]);
            };
            assert_eq!(
                (u16::from(close.code), close.reason.as_str()),
                (1000, "bye")
            );
            assert!(decoder.is_between_messages());
        }
    }
}

#[test]
fn a_large_unmasked_payload_is_written_from_the_callers_bytes() {
    let big = Bytes::from(vec![1u8; super::encode::ZERO_COPY_FROM]);
    let mut out = Outgoing::default();
    out.push_frame(true, OpCode::Text, b"a", None);
    out.push_shared(true, OpCode::Binary, &big, None);
    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
    let n = out.slices(&mut slices);
    assert_eq!(n, 2, "header batch, then the payload itself");
    assert_eq!(
        slices[1].as_ptr(),
        big.as_ptr(),
        "the payload is not copied"
    );
    // A partial write resumes where it stopped.
    out.advance(5);
    let rest = drain(&mut out);
    let big_header = if big.len() > 0xffff { 10 } else { 4 };
    assert_eq!(rest.len(), 3 + big_header + big.len() - 5);
}

#[test]
fn fragments_are_reassembled_with_control_frames_between_them() {
    let mut bytes = client_frame(false, 1, "frag".as_bytes());
    bytes.extend(client_frame(true, 9, b"ping"));
    bytes.extend(client_frame(false, 0, "mént".as_bytes()[..2].as_ref()));
    bytes.extend(client_frame(true, 0, "mént".as_bytes()[2..].as_ref()));
    for step in [1, 2, bytes.len()] {
        let messages = decode_all(&mut server(), &bytes, step).unwrap();
        assert_eq!(
            messages,
            vec![
                Message::Ping(Bytes::from_static(b"ping")),
                Message::text("fragmént")
            ]
        );
    }
}

fn first_error(bytes: &[u8], decoder: &mut Decoder) -> CodecError {
    let mut buf = BytesMut::from(bytes);
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) => panic!("no error in {bytes:?}"),
            Err(e) => return e,
        }
    }
}

#[test]
fn every_protocol_rule_has_its_close_code() {
    let mut frame_64 = vec![0x82, 0xff];
    frame_64.extend_from_slice(&u64::MAX.to_be_bytes());
    frame_64.extend_from_slice(&KEY);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "reserved bit",
            {
                let mut f = client_frame(true, 2, b"x");
                f[0] |= 0x40;
                f
            },
            1002,
        ),
        ("reserved opcode", client_frame(true, 3, b"x"), 1002),
        (
            "reserved control opcode",
            client_frame(true, 0xb, b""),
            1002,
        ),
        ("unmasked from a client", vec![0x81, 0x01, b'x'], 1002),
        ("long ping", client_frame(true, 9, &[0u8; 126]), 1002),
        ("fragmented ping", client_frame(false, 9, b""), 1002),
        ("lone continuation", client_frame(true, 0, b"x"), 1002),
        (
            "data inside fragments",
            [client_frame(false, 1, b"a"), client_frame(true, 1, b"b")].concat(),
            1002,
        ),
        ("64-bit length with its top bit set", frame_64, 1002),
        ("one-byte close", client_frame(true, 8, &[3]), 1002),
        (
            "close code 1005 on the wire",
            client_frame(true, 8, &1005u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 999",
            client_frame(true, 8, &999u16.to_be_bytes()),
            1002,
        ),
        (
            "close reason not UTF-8",
            client_frame(true, 8, &[3, 0xe8, 0xff]),
            1007,
        ),
        ("text not UTF-8", client_frame(true, 1, &[0xff]), 1007),
        (
            "text cut at the end",
            client_frame(true, 1, &[0xe2, 0x82]),
            1007,
        ),
        (
            "text cut across fragments at the end",
            [
                client_frame(false, 1, &[0xe2]),
                client_frame(true, 0, &[0x82]),
            ]
            .concat(),
            1007,
        ),
    ];
    for (what, bytes, code) in cases {
        let error = first_error(&bytes, &mut server());
        assert_eq!(error.close_code(), code, "{what}: {error}");
    }
    // A client refuses masked frames from a server.
    let mut client = Decoder::new(Role::Client, 1 << 20, 1 << 20);
    assert_eq!(
        first_error(&client_frame(true, 2, b"x"), &mut client).close_code(),
        1002
    );
}

#[test]
fn sizes_are_refused_at_the_header_before_the_payload_arrives() {
    let mut decoder = Decoder::new(Role::Server, 1000, 1500);
    let frame = client_frame(true, 2, &[0u8; 1001]);
    // Only the header: already refused.
    let error = first_error(&frame[..8], &mut decoder);
    assert_eq!(
        error,
        CodecError::TooBig {
            size: 1001,
            max: 1000
        }
    );
    // Fragments adding up over the message limit.
    let mut decoder = Decoder::new(Role::Server, 1000, 1500);
    let bytes = [
        client_frame(false, 2, &[0u8; 900]),
        client_frame(true, 0, &[0u8; 700]),
    ]
    .concat();
    assert_eq!(
        first_error(&bytes, &mut decoder),
        CodecError::TooBig {
            size: 1600,
            max: 1500
        }
    );
}

#[test]
fn invalid_utf8_fails_at_the_first_bad_byte_of_an_incomplete_frame() {
    let mut payload = vec![b'a'; 10_000];
    payload[100] = 0xff;
    let frame = client_frame(true, 1, &payload);
    // 200 bytes of a 10 KB frame are enough to fail.
    let mut decoder = server();
    assert_eq!(
        first_error(&frame[..200], &mut decoder),
        CodecError::InvalidUtf8
    );
    // The same across fragments: the second fragment is incomplete.
    let mut bytes = client_frame(false, 1, b"fine");
    bytes.extend_from_slice(&client_frame(true, 0, &payload)[..300]);
    assert_eq!(first_error(&bytes, &mut server()), CodecError::InvalidUtf8);
}

#[test]
fn the_decoder_asks_for_the_rest_of_a_large_frame() {
    let frame = client_frame(true, 2, &[5u8; 50_000]);
    let mut decoder = server();
    let mut buf = BytesMut::from(&frame[..1000]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert_eq!(decoder.wanted(buf.len()), frame.len() - 1000);
    assert!(!decoder.is_between_messages());
}

/// Forward mode over `bytes` fed in pieces of `step`: the data bytes
/// passed on (concatenated), the control messages, and how many data
/// pieces ended inside a frame (cut-through).
fn forward_all(
    decoder: &mut Decoder,
    bytes: &[u8],
    step: usize,
) -> Result<(Vec<u8>, Vec<Message>, usize), CodecError> {
    let mut buf = BytesMut::new();
    let (mut data, mut controls, mut partial) = (Vec::new(), Vec::new(), 0);
    for piece in bytes.chunks(step) {
        buf.extend_from_slice(piece);
        while let Some(got) = decoder.forward(&mut buf)? {
            match got {
                Forward::Data {
                    bytes, frame_done, ..
                } => {
                    data.extend_from_slice(&bytes);
                    partial += usize::from(!frame_done);
                }
                Forward::Control(m) => controls.push(m),
                Forward::Message(m) => panic!("the decoder forwards frames, not messages: {m:?}"),
            }
        }
    }
    assert!(buf.is_empty(), "bytes left over: {buf:?}");
    Ok((data, controls, partial))
}

#[test]
fn forwarding_passes_data_frames_on_verbatim_and_cuts_large_ones_through() {
    let big_text = "ü".repeat(60_000);
    let big_binary: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let frames = [
        client_frame(true, 1, b"hello"),
        client_frame(true, 2, &big_binary),
        client_frame(false, 1, "frag".as_bytes()),
        client_frame(true, 9, b"ping"),
        client_frame(false, 0, &"mént".as_bytes()[..2]),
        client_frame(true, 0, &"mént".as_bytes()[2..]),
        client_frame(true, 1, big_text.as_bytes()),
        client_frame(true, 8, &1000u16.to_be_bytes()),
    ];
    let data_frames: Vec<u8> = frames
        .iter()
        .filter(|f| f[0] & 0x08 == 0)
        .flatten()
        .copied()
        .collect();
    let bytes: Vec<u8> = frames.concat();
    for step in [1, 7, 1000, 65_536, bytes.len()] {
        let (data, controls, partial) = forward_all(&mut server(), &bytes, step).unwrap();
        assert!(data == data_frames, "step {step}: data frames changed");
        assert_eq!(controls.len(), 2, "step {step}: {controls:?}");
        assert_eq!(controls[0], Message::Ping(Bytes::from_static(b"ping")));
        assert!(matches!(controls[1], Message::Close(Some(_))));
        if step < big_binary.len() {
            assert!(partial > 0, "step {step}: nothing was cut through");
        } else {
            assert_eq!(partial, 0, "step {step}: whole frames were cut");
        }
    }
}

#[test]
fn forwarding_checks_what_decoding_checks() {
    let mut invalid = vec![b'a'; 40_000];
    invalid[39_900] = 0xff;
    let bad_utf8 = [
        client_frame(true, 1, b"ok"),
        client_frame(true, 1, &invalid),
    ]
    .concat();
    let late_bad = [
        client_frame(false, 1, b"ok"),
        client_frame(true, 0, &invalid),
    ]
    .concat();
    let cases = [
        bad_utf8,
        late_bad,
        client_frame(true, 0, b"continuation first"),
        [client_frame(false, 1, b"a"), client_frame(true, 2, b"b")].concat(),
        vec![0x81 | 0x40, 0x80, 0, 0, 0, 0],
        [client_frame(true, 1, b"ok"), vec![0x83, 0x80, 0, 0, 0, 0]].concat(),
    ];
    for bytes in cases {
        for step in [1, 3, bytes.len()] {
            let decoded = decode_all(&mut server(), &bytes, step).map(|_| ());
            let forwarded = forward_all(&mut server(), &bytes, step).map(|_| ());
            assert_eq!(forwarded, decoded, "step {step}: {:?}", &bytes[..8]);
            assert!(decoded.is_err());
        }
    }
}

#[test]
fn forwarding_passes_large_server_frames_through_in_pieces() {
    let big: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 7) as u8 + b'a').collect();
    let mut out = Outgoing::default();
    out.push_frame(true, OpCode::Text, &big, None);
    out.push_frame(true, OpCode::Binary, &big[..70_000], None);
    let bytes = drain(&mut out);
    for step in [65_536, 200_000, 1 << 20] {
        let mut decoder = Decoder::new(Role::Client, 16 << 20, 16 << 20);
        let (data, controls, partial) = forward_all(&mut decoder, &bytes, step).unwrap();
        assert!(data == bytes, "step {step}: frames changed");
        assert!(controls.is_empty());
        assert!(partial > 0);
    }
}

#[test]
fn close_codes_on_the_wire_follow_the_iana_registry() {
    use super::decode::close_code_allowed;
    let allowed: Vec<u16> = (0..=u16::MAX).filter(|&c| close_code_allowed(c)).collect();
    for code in [
        1000, 1001, 1002, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999,
    ] {
        assert!(allowed.contains(&code), "{code} may be sent");
    }
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        assert!(!allowed.contains(&code), "{code} may not be sent");
    }
    // A 1014 close (what a proxy sends when its backend failed) is a
    // close, not a protocol error.
    let mut decoder = Decoder::new(Role::Server, 1 << 20, 1 << 20);
    let mut buf = BytesMut::from(&client_frame(true, 8, &1014u16.to_be_bytes())[..]);
    match decoder.decode(&mut buf) {
        Ok(Some(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1014),
        other => panic!("a 1014 close: {other:?}"),
    }
}
