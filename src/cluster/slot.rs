//! Hash slots: CRC16-XMODEM of the key (or of its `{hashtag}`) modulo 16384.
//!
//! Owns: the one function that maps a key to a slot. Must not: allocate.

pub const SLOTS: usize = 16384;

/// The slot of `key`, following the Redis Cluster specification's hashtag rule: if the key
/// has a `{` and a later `}` with at least one byte between them, only those bytes are hashed.
#[inline]
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(hashed) % SLOTS as u16
}

/// `TABLES[k][x]`: the CRC state after byte `x` followed by `k` zero bytes.
const TABLES: [[u16; 256]; 4] = {
    let mut t = [[0u16; 256]; 4];
    let mut x = 0;
    while x < 256 {
        let mut crc = (x as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        t[0][x] = crc;
        x += 1;
    }
    let mut k = 1;
    while k < 4 {
        let mut x = 0;
        while x < 256 {
            let prev = t[k - 1][x];
            t[k][x] = (prev << 8) ^ t[0][(prev >> 8) as usize];
            x += 1;
        }
        k += 1;
    }
    t
};

/// CRC16-XMODEM (poly 0x1021, init 0), four bytes per step ("slicing by 4"): keys are usually
/// 10-40 bytes, and the byte-at-a-time loop of the `crc16` crate was 4% of slotmux's samples
/// at GET pipeline 16. The `crc16` crate stays as the reference in the tests.
#[inline]
pub fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let [hi, lo] = crc.to_be_bytes();
        crc = TABLES[3][usize::from(hi ^ c[0])]
            ^ TABLES[2][usize::from(lo ^ c[1])]
            ^ TABLES[1][usize::from(c[2])]
            ^ TABLES[0][usize::from(c[3])];
    }
    for &b in chunks.remainder() {
        crc = (crc << 8) ^ TABLES[0][usize::from((crc >> 8) as u8 ^ b)];
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_vector() {
        assert_eq!(
            crc16::State::<crc16::XMODEM>::calculate(b"123456789"),
            0x31C3
        );
    }

    #[test]
    fn sliced_crc_matches_the_crc16_crate() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        // Every length from 0 to 200 (all remainders), pseudo-random bytes.
        let mut x: u32 = 0x1234_5678;
        let data: Vec<u8> = (0..200)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect();
        for len in 0..=data.len() {
            for start in [0, 1, 3] {
                let d = &data[start.min(len)..len];
                assert_eq!(
                    crc16_xmodem(d),
                    crc16::State::<crc16::XMODEM>::calculate(d),
                    "len {len} start {start}"
                );
            }
        }
    }

    #[test]
    fn matches_cluster_keyslot() {
        // Values from a real `CLUSTER KEYSLOT` (see shared/REFERENCE.md).
        for (k, s) in [
            (&b"foo"[..], 12182),
            (b"bar", 5061),
            (b"hello", 866),
            (b"{user1000}.following", 3443),
            (b"foo{}{bar}", 8363),
            (b"foo{{bar}}zap", 4015),
            (b"foo{bar}{zap}", 5061),
            (b"{}", 15257),
            (b"{", 4092),
        ] {
            assert_eq!(key_slot(k), s, "{}", String::from_utf8_lossy(k));
        }
    }
}
