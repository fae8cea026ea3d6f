//! WebSocket frame codec (RFC 6455), pure functions: parsing server frames in place and
//! encoding masked client frames.

use std::io;

/// Largest frame accepted from the server.
pub const MAX_FRAME: usize = 16 << 20;

pub fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Parses one frame at the start of `b`; unmasks its payload in place. Returns FIN, the
/// opcode and the payload's range within `b` (its end is the frame's length).
pub fn parse(b: &mut [u8]) -> io::Result<Option<(bool, u8, std::ops::Range<usize>)>> {
    if b.len() < 2 {
        return Ok(None);
    }
    let (fin, op) = (b[0] & 0x80 != 0, b[0] & 0x0f);
    let masked = b[1] & 0x80 != 0;
    let (len, mut hdr) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
        127 if b.len() >= 10 => (
            u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")),
            10,
        ),
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if len > MAX_FRAME as u64 {
        return Err(bad("frame too large"));
    }
    let mask = if masked {
        if b.len() < hdr + 4 {
            return Ok(None);
        }
        hdr += 4;
        Some([b[hdr - 4], b[hdr - 3], b[hdr - 2], b[hdr - 1]])
    } else {
        None
    };
    let total = hdr + len as usize;
    if b.len() < total {
        return Ok(None);
    }
    if let Some(m) = mask {
        for (i, x) in b[hdr..total].iter_mut().enumerate() {
            *x ^= m[i & 3];
        }
    }
    Ok(Some((fin, op, hdr..total)))
}

/// A masked client frame into `out` (cleared first).
pub fn encode(out: &mut Vec<u8>, op: u8, payload: &[u8], mask: [u8; 4]) {
    out.clear();
    out.push(0x80 | op);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn server_frame(fin: bool, op: u8, p: &[u8]) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | op];
        match p.len() {
            n if n < 126 => v.push(n as u8),
            n if n <= 0xffff => {
                v.push(126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(p);
        v
    }

    #[test]
    fn parses_all_length_forms_and_waits_for_more() {
        for n in [0usize, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let p = vec![b'a'; n];
            let mut f = server_frame(true, 1, &p);
            let (fin, op, r) = parse(&mut f).unwrap().unwrap();
            assert!(fin);
            assert_eq!((op, r.end, r.len()), (1, f.len(), n));
            let cut = f.len() - 1;
            assert!(parse(&mut f[..cut]).unwrap().is_none());
        }
        assert!(parse(&mut [0x81]).unwrap().is_none());
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&(u64::MAX).to_be_bytes());
        assert!(parse(&mut huge).is_err());
    }

    #[test]
    fn client_frames_unmask_back_to_the_payload() {
        let mut out = Vec::new();
        for n in [3usize, 200, 70_000] {
            let p: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            encode(&mut out, 1, &p, [1, 2, 3, 4]);
            assert_eq!(out[1] & 0x80, 0x80);
            let (_, _, r) = parse(&mut out).unwrap().unwrap();
            assert_eq!(&out[r], &p[..]);
        }
    }
}
