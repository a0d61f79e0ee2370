//! Hot keys: the keys and slots that take the most requests, found by sampling.
//!
//! Owns: the per-worker [`Sketch`] (a space-saving top-K over sampled key accesses, and sampled
//! request rates per slot), the once-a-second [`View`] each worker publishes into [`HotKeys`],
//! and merging those views for `SLOTMUX HOTKEYS`, `/debug/hotkeys` and the busiest-slot gauge.
//! Must not: allocate or lock on the request path (a command that is not sampled costs one
//! decrement; a sampled one hashes its keys and scans [`CAPACITY`] preallocated entries), or
//! put key names into metric labels (their number is unbounded and they may be secrets).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;

use crate::cluster::key_slot;
use crate::cluster::slot::SLOTS;
use crate::command::table::CommandSpec;
use crate::command::{keys, Args};

/// One command in this many, on average, has its keys sampled. The gaps between samples are
/// random (1 to 2x-1 commands), so a client that alternates two commands is not always
/// sampled on the same one.
pub const SAMPLE_EVERY: u32 = 8;
/// Keys tracked per worker. Space-saving guarantees that a key with more than 1/CAPACITY of
/// the sampled accesses is among them.
pub const CAPACITY: usize = 64;
/// Bytes of a key that are kept and shown; a longer key is told apart by a hash of all of it.
pub const KEY_PREFIX: usize = 128;
/// Space-saving counts are halved every this many publications (about seconds), so a key that
/// cooled down can give its place to one that is hot now.
const HALVE_EVERY: u32 = 10;
/// Weight of the newest second in the smoothed rates (a half-life of one second).
const ALPHA: f64 = 0.5;
/// A sampled command's arguments beyond this many are not looked at (a sample, not a count).
const MAX_SAMPLED_ARGS: usize = 64;
/// Slots each worker reports (the merged list keeps the busiest of all of them).
const SLOTS_PER_VIEW: usize = 32;

/// A key as a worker tracks it.
struct Entry {
    hash: u64,
    len: usize,
    key: [u8; KEY_PREFIX],
    slot: u16,
    /// Sampled accesses (space-saving: may include the count of the key it replaced).
    count: u64,
    /// `count` at the last publication: the difference is this second's accesses.
    seen: u64,
    /// Estimated requests per second, smoothed.
    rate: f64,
    /// Entered since the last publication: its first rate is not smoothed.
    fresh: bool,
}

/// One worker's sampler. Lives in the worker (no lock: only its thread touches it).
pub struct Sketch {
    gap: u32,
    rng: u64,
    entries: Vec<Entry>,
    slot_hits: Box<[u32]>,
    slot_rate: Box<[f32]>,
    publishes: u32,
    last: Instant,
}

/// A hot key as reported: the key (its first [`KEY_PREFIX`] bytes), its full length, its slot
/// and its estimated requests per second.
#[derive(Debug, Clone, PartialEq)]
pub struct HotKey {
    pub key: Bytes,
    pub len: usize,
    pub slot: u16,
    pub rate: f64,
}

/// What one worker saw, as of its last publication.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub keys: Vec<HotKey>,
    /// The busiest slots and their estimated requests per second.
    pub slots: Vec<(u16, f64)>,
}

impl Sketch {
    pub fn new(seed: u64) -> Sketch {
        let mut s = Sketch {
            gap: 1,
            // xorshift must not start at 0.
            rng: seed | 1,
            entries: Vec::with_capacity(CAPACITY),
            slot_hits: vec![0u32; SLOTS].into_boxed_slice(),
            slot_rate: vec![0f32; SLOTS].into_boxed_slice(),
            publishes: 0,
            last: Instant::now(),
        };
        s.gap = s.next_gap();
        s
    }

    /// Counts one command; true when this one is to be sampled.
    #[inline]
    pub fn due(&mut self) -> bool {
        if self.gap > 1 {
            self.gap -= 1;
            return false;
        }
        self.gap = self.next_gap();
        true
    }

    fn next_gap(&mut self) -> u32 {
        // xorshift64*: cheap, and good enough to break up request patterns.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let r = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32;
        1 + r % (2 * SAMPLE_EVERY - 1)
    }

    /// Records the keys of a sampled command.
    pub fn record_command(&mut self, spec: &CommandSpec, args: Args<'_>) {
        let mut list: [&[u8]; MAX_SAMPLED_ARGS] = [&[]; MAX_SAMPLED_ARGS];
        let n = args.len().min(MAX_SAMPLED_ARGS);
        for (i, a) in list.iter_mut().enumerate().take(n) {
            *a = args.get(i).unwrap_or_default();
        }
        let list = &list[..n];
        // A command whose key arguments are malformed records what was found before the error.
        let _ = keys::for_each_key(spec, list, |i, _| {
            if let Some(k) = list.get(i) {
                self.record(k);
            }
        });
    }

    /// Records one sampled access of `key`.
    pub fn record(&mut self, key: &[u8]) {
        let slot = key_slot(key);
        if let Some(h) = self.slot_hits.get_mut(usize::from(slot)) {
            *h = h.saturating_add(1);
        }
        let hash = fnv1a64(key);
        let prefix = &key[..key.len().min(KEY_PREFIX)];
        let mut min = (0usize, u64::MAX);
        for (i, e) in self.entries.iter_mut().enumerate() {
            if e.hash == hash && e.len == key.len() && &e.key[..prefix.len()] == prefix {
                e.count += 1;
                return;
            }
            if e.count < min.1 {
                min = (i, e.count);
            }
        }
        let mut fresh = Entry {
            hash,
            len: key.len(),
            key: [0; KEY_PREFIX],
            slot,
            count: 1,
            seen: 0,
            rate: 0.0,
            fresh: true,
        };
        fresh.key[..prefix.len()].copy_from_slice(prefix);
        if self.entries.len() < CAPACITY {
            self.entries.push(fresh);
        } else if let Some(e) = self.entries.get_mut(min.0) {
            // Space-saving: the newcomer takes the smallest count plus one, so a key that is
            // truly frequent cannot be pushed out by a stream of rare ones. Its rate counts
            // only its own accesses.
            fresh.count = min.1 + 1;
            fresh.seen = min.1;
            *e = fresh;
        }
    }

    /// Turns the accesses since the last call into rates and returns what this worker sees.
    /// Cold path: about once a second.
    pub fn publish(&mut self, now: Instant) -> View {
        let dt = now.duration_since(self.last).as_secs_f64().max(0.001);
        self.last = now;
        let scale = f64::from(SAMPLE_EVERY) / dt;
        self.publishes = self.publishes.wrapping_add(1);
        let halve = self.publishes % HALVE_EVERY == 0;
        let mut keys = Vec::new();
        for e in &mut self.entries {
            let now_rate = e.count.saturating_sub(e.seen) as f64 * scale;
            e.rate = if e.fresh {
                now_rate
            } else {
                ALPHA * now_rate + (1.0 - ALPHA) * e.rate
            };
            e.fresh = false;
            if halve {
                e.count /= 2;
            }
            e.seen = e.count;
            if e.rate >= 0.5 {
                keys.push(HotKey {
                    key: Bytes::copy_from_slice(&e.key[..e.len.min(KEY_PREFIX)]),
                    len: e.len,
                    slot: e.slot,
                    rate: e.rate,
                });
            }
        }
        let mut slots = Vec::new();
        for (i, (hits, rate)) in self
            .slot_hits
            .iter_mut()
            .zip(self.slot_rate.iter_mut())
            .enumerate()
        {
            let now_rate = f64::from(*hits) * scale;
            *hits = 0;
            let r = ALPHA * now_rate + (1.0 - ALPHA) * f64::from(*rate);
            *rate = if r < 0.01 { 0.0 } else { r as f32 };
            if r >= 0.5 {
                slots.push((i as u16, r));
            }
        }
        slots.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        slots.truncate(SLOTS_PER_VIEW);
        View { keys, slots }
    }
}

fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Every worker's latest [`View`] (a lock taken by a publishing worker once a second and by
/// readers; never on the request path).
#[derive(Default)]
pub struct HotKeys {
    views: Mutex<Vec<View>>,
}

impl HotKeys {
    pub fn publish(&self, worker: usize, view: View) {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        if views.len() <= worker {
            views.resize_with(worker + 1, View::default);
        }
        views[worker] = view;
    }

    /// The `n` keys with the highest estimated rates, summed over workers.
    pub fn top_keys(&self, n: usize) -> Vec<HotKey> {
        let views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        let mut merged: HashMap<(Bytes, usize), HotKey> = HashMap::new();
        for k in views.iter().flat_map(|v| v.keys.iter()) {
            merged
                .entry((k.key.clone(), k.len))
                .and_modify(|m| m.rate += k.rate)
                .or_insert_with(|| k.clone());
        }
        drop(views);
        let mut all: Vec<HotKey> = merged.into_values().collect();
        all.sort_by(|a, b| b.rate.total_cmp(&a.rate).then_with(|| a.key.cmp(&b.key)));
        all.truncate(n);
        all
    }

    /// The `n` slots with the highest estimated rates, summed over workers.
    pub fn top_slots(&self, n: usize) -> Vec<(u16, f64)> {
        let views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        let mut merged: HashMap<u16, f64> = HashMap::new();
        for &(s, r) in views.iter().flat_map(|v| v.slots.iter()) {
            *merged.entry(s).or_default() += r;
        }
        drop(views);
        let mut all: Vec<(u16, f64)> = merged.into_iter().collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

/// `s` as a JSON string literal (bytes that are not UTF-8 become U+FFFD).
pub fn json_string(s: &[u8]) -> String {
    let text = String::from_utf8_lossy(s);
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn gaps_average_the_sampling_rate() {
        let mut s = Sketch::new(42);
        let n = 800_000;
        let sampled = (0..n).filter(|_| s.due()).count();
        let expect = n / SAMPLE_EVERY as usize;
        assert!(
            sampled > expect * 95 / 100 && sampled < expect * 105 / 100,
            "{sampled} samples of {n}"
        );
    }

    #[test]
    fn alternating_commands_are_both_sampled() {
        // A fixed "every 8th" would always land on the same one of two alternating keys.
        let mut s = Sketch::new(7);
        let mut hits = [0u32; 2];
        for i in 0..80_000 {
            if s.due() {
                hits[i % 2] += 1;
            }
        }
        assert!(hits[0] > 4000 && hits[1] > 4000, "{hits:?}");
    }

    #[test]
    fn a_heavy_hitter_survives_a_stream_of_rare_keys() {
        let mut s = Sketch::new(1);
        let t0 = s.last;
        for i in 0..20_000u32 {
            s.record(format!("rare:{i}").as_bytes());
            if i % 5 == 0 {
                s.record(b"hot");
            }
        }
        assert_eq!(s.entries.len(), CAPACITY);
        let v = s.publish(t0 + Duration::from_secs(1));
        let top = v
            .keys
            .iter()
            .max_by(|a, b| a.rate.total_cmp(&b.rate))
            .expect("keys");
        assert_eq!(&top.key[..], b"hot");
        assert_eq!(top.slot, key_slot(b"hot"));
        // 4,000 sampled accesses in one second: 32,000 requests a second.
        assert!((top.rate - 32_000.0).abs() < 1.0, "{}", top.rate);
        // Slot rates are smoothed from zero: the first second counts half.
        let slot = key_slot(b"hot");
        assert!(
            v.slots.iter().any(|&(s, r)| s == slot && r >= 16_000.0),
            "{:?}",
            v.slots
        );
    }

    #[test]
    fn rates_decay_when_a_key_cools_down_and_long_keys_are_cut() {
        let mut s = Sketch::new(1);
        let long = vec![b'x'; 300];
        let t0 = s.last;
        for _ in 0..100 {
            s.record(&long);
        }
        let v = s.publish(t0 + Duration::from_secs(1));
        assert_eq!(v.keys.len(), 1);
        assert_eq!(v.keys[0].key.len(), KEY_PREFIX);
        assert_eq!(v.keys[0].len, 300);
        assert!((v.keys[0].rate - 800.0).abs() < 0.01);
        let v = s.publish(t0 + Duration::from_secs(2));
        assert!((v.keys[0].rate - 400.0).abs() < 0.01, "{}", v.keys[0].rate);
        // Same prefix, other length: another key.
        s.record(&long[..299]);
        assert_eq!(s.entries.len(), 2);
        let mut t = t0 + Duration::from_secs(2);
        for _ in 0..20 {
            t += Duration::from_secs(1);
            s.publish(t);
        }
        assert!(s.publish(t + Duration::from_secs(1)).keys.is_empty());
    }

    #[test]
    fn views_merge_across_workers() {
        let h = HotKeys::default();
        let k = |key: &'static [u8], rate| HotKey {
            key: Bytes::from_static(key),
            len: key.len(),
            slot: key_slot(key),
            rate,
        };
        h.publish(
            1,
            View {
                keys: vec![k(b"a", 10.0), k(b"b", 30.0)],
                slots: vec![(1, 5.0), (2, 1.0)],
            },
        );
        h.publish(
            0,
            View {
                keys: vec![k(b"a", 25.0), k(b"c", 1.0)],
                slots: vec![(2, 7.0)],
            },
        );
        let top = h.top_keys(2);
        assert_eq!(top.len(), 2);
        assert_eq!((&top[0].key[..], top[0].rate), (&b"a"[..], 35.0));
        assert_eq!(&top[1].key[..], b"b");
        assert_eq!(h.top_slots(1), vec![(2, 8.0)]);
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(
            json_string(b"a\"b\\c\n\x01"),
            "\"a\\\"b\\\\c\\u000a\\u0001\""
        );
        assert_eq!(json_string(&[0xff, b'k']), "\"\u{fffd}k\"");
    }
}
