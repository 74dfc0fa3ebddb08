//! Incremental UTF-8 validation of a text message whose bytes arrive in
//! pieces (a frame split across reads, or a message split across frames):
//! invalid input fails at its first bad byte, as RFC 6455 8.1 asks ("fail
//! fast"), instead of after the rest of a large frame has arrived
//! (Autobahn cases 6.4.x). `simdutf8` checks each piece; only a code point
//! cut at the end of a piece (at most 3 bytes) is carried to the next.

use simdutf8::compat::from_utf8;

/// The state of one text message's validation.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Utf8Check {
    /// The start of a code point that the last piece cut off.
    carry: [u8; 4],
    carry_len: u8,
}

/// The bytes seen so far cannot be the start of valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InvalidUtf8;

impl Utf8Check {
    /// Checks the next piece of the message.
    pub(crate) fn feed(&mut self, mut piece: &[u8]) -> Result<(), InvalidUtf8> {
        if self.carry_len > 0 {
            // Complete the cut code point, one byte at a time (at most 3).
            while self.carry_len > 0 {
                let Some((&first, rest)) = piece.split_first() else {
                    return Ok(());
                };
                self.carry[usize::from(self.carry_len)] = first;
                self.carry_len += 1;
                piece = rest;
                let have = &self.carry[..usize::from(self.carry_len)];
                match from_utf8(have) {
                    Ok(_) => self.carry_len = 0,
                    Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                    Err(_) if self.carry_len == 4 => return Err(InvalidUtf8),
                    Err(_) => {}
                }
            }
        }
        match from_utf8(piece) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                // Incomplete at the end: keep the cut code point.
                let tail = &piece[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// The message has ended: a code point cut at its end is an error.
    pub(crate) fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let cut = self.carry_len > 0;
        *self = Self::default();
        if cut {
            Err(InvalidUtf8)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_in_pieces(bytes: &[u8], size: usize) -> Result<(), InvalidUtf8> {
        let mut check = Utf8Check::default();
        for piece in bytes.chunks(size.max(1)) {
            check.feed(piece)?;
        }
        check.finish()
    }

    #[test]
    fn valid_text_passes_in_pieces_of_every_size() {
        let text = "κόσμε — ünïcödé 😀 plain".as_bytes();
        for size in 1..=text.len() {
            assert_eq!(check_in_pieces(text, size), Ok(()), "pieces of {size}");
        }
    }

    #[test]
    fn invalid_text_fails_in_pieces_of_every_size() {
        let cases: [&[u8]; 5] = [
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", // surrogate
            b"abc\xff",
            b"\xf4\x90\x80\x80",  // above U+10FFFF
            b"\xe2\x82",          // cut at the end
            b"\xc0\xaf overlong", // overlong
        ];
        for bytes in cases {
            for size in 1..=bytes.len() {
                assert_eq!(
                    check_in_pieces(bytes, size),
                    Err(InvalidUtf8),
                    "{bytes:?} in {size}"
                );
            }
        }
    }

    #[test]
    fn a_bad_byte_fails_before_the_rest_arrives() {
        let mut check = Utf8Check::default();
        assert_eq!(check.feed(b"fine so far "), Ok(()));
        assert_eq!(check.feed(b"\xed\xa0\x80"), Err(InvalidUtf8));
    }
}
