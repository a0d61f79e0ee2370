//! `classify` (redirect recognition) on arbitrary bytes.
//!
//! Checks: no panic; a MOVED/ASK result has a slot below 16384 and a non-empty address taken
//! from the frame; only a frame starting with `-` redirects; and the result equals a reference
//! written from Redis's format (`-MOVED <slot> <host>:<port>\r\n`, `-ASK ...`, and the
//! `-TRYAGAIN`/`-CLUSTERDOWN`/`-LOADING` prefixes), with the slot in canonical decimal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slotmux::resp::reply::{classify, Redirect};

fn slot_and_addr(rest: &[u8]) -> Option<(u16, &str)> {
    let sp = rest.iter().position(|&b| b == b' ')?;
    let slot_text = std::str::from_utf8(&rest[..sp]).ok()?;
    let slot: u16 = slot_text.parse().ok()?;
    if slot >= 16384 || slot.to_string() != slot_text {
        return None;
    }
    let addr = std::str::from_utf8(&rest[sp + 1..]).ok()?;
    (!addr.is_empty()).then_some((slot, addr))
}

fn reference(frame: &[u8]) -> Option<Redirect<'_>> {
    let body = frame.strip_prefix(b"-")?;
    let body = body.strip_suffix(b"\r\n").unwrap_or(body);
    if let Some(rest) = body.strip_prefix(b"MOVED ") {
        let (slot, addr) = slot_and_addr(rest)?;
        return Some(Redirect::Moved { slot, addr });
    }
    if let Some(rest) = body.strip_prefix(b"ASK ") {
        let (slot, addr) = slot_and_addr(rest)?;
        return Some(Redirect::Ask { slot, addr });
    }
    [
        (&b"TRYAGAIN"[..], Redirect::TryAgain),
        (b"CLUSTERDOWN", Redirect::ClusterDown),
        (b"LOADING", Redirect::Loading),
    ]
    .into_iter()
    .find(|(p, _)| body.starts_with(p))
    .map(|(_, r)| r)
}

fuzz_target!(|frame: &[u8]| {
    let got = classify(frame);
    if let Some(Redirect::Moved { slot, addr } | Redirect::Ask { slot, addr }) = got {
        assert!(slot < 16384, "slot {slot} from {frame:?}");
        assert!(!addr.is_empty());
        let start = addr.as_ptr() as usize - frame.as_ptr() as usize;
        assert!(
            start + addr.len() <= frame.len(),
            "address outside the frame"
        );
    }
    if got.is_some() {
        assert_eq!(
            frame[0], b'-',
            "a redirect from a frame that is not an error"
        );
    }
    assert_eq!(
        got,
        reference(frame),
        "classify differs from the reference on {frame:?}"
    );
});
