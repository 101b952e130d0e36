//! Attribute runs that repeat from span to span, kept as an encoder wrote them.
//!
//! An upstream endpoint's `server.address`, `server.port`, `network.peer.*` and
//! `peer.service` are the same in every client span that calls it, and a server span's
//! `server.address` and `server.port` follow from a `Host` that few values take. Writing such
//! a run costs a split, a UTF-8 check and a few hundred bytes of field heads; copying it costs
//! a hash and a compare. Each export buffer (one per thread) has its own memo, so no lock or
//! atomic is added; it is a small direct-mapped table whose slots are reused without
//! allocating once warm, so a client sending a new `Host` each time only makes it miss.

/// Slots per memo: a gateway's busy endpoints and hosts, roughly.
const SLOTS: usize = 32;
/// Keys longer than this are not kept (a DNS name with a port is at most 259 bytes): a
/// client's giant `Host` must not stay in memory.
const MAX_KEY: usize = 320;

#[derive(Default)]
pub(crate) struct Memo {
    slots: Vec<Slot>,
}

#[derive(Default)]
struct Slot {
    /// The key's parts, one after another, and their lengths.
    key: Vec<u8>,
    lengths: Vec<usize>,
    run: Vec<u8>,
}

impl Slot {
    fn holds(&self, parts: &[&[u8]]) -> bool {
        if self.lengths.len() != parts.len() {
            return false;
        }
        let mut at = 0;
        for (part, &len) in parts.iter().zip(&self.lengths) {
            if part.len() != len || self.key.get(at..at + len) != Some(part) {
                return false;
            }
            at += len;
        }
        true
    }
}

impl Memo {
    /// The slots, made on first use (a buffer no span is written to needs none).
    fn slots(&mut self) -> &mut [Slot] {
        if self.slots.is_empty() {
            self.slots.resize_with(SLOTS, Slot::default);
        }
        &mut self.slots
    }

    /// The run stored under the key made of `parts`, or `None`.
    pub(crate) fn get(&mut self, parts: &[&[u8]]) -> Option<&[u8]> {
        let slot = &self.slots()[slot_of(parts)];
        slot.holds(parts).then_some(slot.run.as_slice())
    }

    /// Store `run` under the key made of `parts` (in place of what its slot held), unless
    /// the key is over [`MAX_KEY`].
    pub(crate) fn store(&mut self, parts: &[&[u8]], run: &[u8]) {
        if parts.iter().map(|p| p.len()).sum::<usize>() > MAX_KEY {
            return;
        }
        let slot = &mut self.slots()[slot_of(parts)];
        slot.key.clear();
        slot.lengths.clear();
        for part in parts {
            slot.key.extend_from_slice(part);
            slot.lengths.push(part.len());
        }
        slot.run.clear();
        slot.run.extend_from_slice(run);
    }
}

/// A multiplicative hash of the key's parts, 8 bytes at a time (keys are a few dozen bytes).
fn slot_of(parts: &[&[u8]]) -> usize {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut hash = 0u64;
    for part in parts {
        // The length goes in too, so that ("ab", "c") and ("a", "bc") differ.
        hash = (hash.rotate_left(5) ^ part.len() as u64).wrapping_mul(K);
        let mut chunks = part.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            hash = (hash.rotate_left(5) ^ word).wrapping_mul(K);
        }
        let tail = chunks.remainder().iter().fold(0u64, |word, &b| (word << 8) | u64::from(b));
        hash = (hash.rotate_left(5) ^ tail).wrapping_mul(K);
    }
    (hash >> 32) as usize % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_runs_by_their_whole_key() {
        let mut memo = Memo::default();
        assert_eq!(memo.get(&[b"ab", b"c"]), None);
        memo.store(&[b"ab", b"c"], b"run 1");
        assert_eq!(memo.get(&[b"ab", b"c"]), Some(&b"run 1"[..]));
        assert_eq!(memo.get(&[b"a", b"bc"]), None);
        assert_eq!(memo.get(&[b"ab", b"c", b""]), None);
        memo.store(&[b"a", b"bc"], b"run 2");
        assert_eq!(memo.get(&[b"a", b"bc"]), Some(&b"run 2"[..]));
        // A key over the bound is not kept.
        let giant = vec![b'h'; MAX_KEY + 1];
        memo.store(&[&giant], b"run");
        assert_eq!(memo.get(&[&giant]), None);
        // Many keys: each found again is found with its own run (colliding ones replace).
        for i in 0..100u32 {
            let key = i.to_string();
            if memo.get(&[key.as_bytes()]).is_none() {
                memo.store(&[key.as_bytes()], key.as_bytes());
            }
            assert_eq!(memo.get(&[key.as_bytes()]), Some(key.as_bytes()));
        }
    }
}
