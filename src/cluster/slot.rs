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
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS as u16
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
