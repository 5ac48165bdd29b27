//! Attention state kept between requests, so a follow-up question pays only for its new tokens.
//!
//! A [`KvCache`] holds the keys and values of one token sequence. The [`PrefixStore`] keeps
//! recent sequences (the coach's system prompt and recent conversations) under a memory budget,
//! evicting the least recently used; a new prompt starts from the stored sequence that shares
//! its longest prefix.

/// Keys and values of one sequence, per layer, position-major (`len × width` floats each).
#[derive(Clone, Default)]
pub struct KvCache {
    pub keys: Vec<Vec<f32>>,
    pub values: Vec<Vec<f32>>,
    /// Floats per position per layer (key heads × head size).
    pub width: usize,
    pub len: usize,
}

impl KvCache {
    pub fn new(layers: usize, width: usize) -> KvCache {
        KvCache {
            keys: vec![Vec::new(); layers],
            values: vec![Vec::new(); layers],
            width,
            len: 0,
        }
    }

    /// Forgets positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        let len = len.min(self.len);
        for layer in self.keys.iter_mut().chain(self.values.iter_mut()) {
            layer.truncate(len * self.width);
        }
        self.len = len;
    }

    /// A copy of the first `len` positions.
    pub fn prefix(&self, len: usize) -> KvCache {
        let len = len.min(self.len);
        let copy = |layers: &Vec<Vec<f32>>| {
            layers
                .iter()
                .map(|l| l[..len * self.width].to_vec())
                .collect()
        };
        KvCache {
            keys: copy(&self.keys),
            values: copy(&self.values),
            width: self.width,
            len,
        }
    }

    pub fn bytes(&self) -> usize {
        2 * self.keys.len() * self.len * self.width * std::mem::size_of::<f32>()
    }
}

/// A sequence of tokens with the attention state of all of them, and whose it is.
pub struct Sequence {
    /// The tenant the sequence was computed for. State is never shared across owners, even for
    /// equal tokens: a faster answer would tell one tenant what another's prompts begin with.
    pub owner: String,
    pub tokens: Vec<u32>,
    pub cache: KvCache,
}

impl Sequence {
    pub fn empty(owner: &str, layers: usize, width: usize) -> Sequence {
        Sequence {
            owner: owner.to_string(),
            tokens: Vec::new(),
            cache: KvCache::new(layers, width),
        }
    }
}

/// Recent sequences under a memory budget, least recently used evicted first.
pub struct PrefixStore {
    entries: Vec<(Sequence, u64)>,
    budget_bytes: usize,
    clock: u64,
}

/// Shorter shared prefixes are not worth a copy.
const MIN_SHARED: usize = 8;

impl PrefixStore {
    pub fn new(budget_bytes: usize) -> PrefixStore {
        PrefixStore {
            entries: Vec::new(),
            budget_bytes,
            clock: 0,
        }
    }

    /// Keeps `sequence`. A stored sequence it extends is dropped (this one supersedes it).
    pub fn put(&mut self, sequence: Sequence) {
        if sequence.tokens.len() < MIN_SHARED || sequence.cache.bytes() > self.budget_bytes {
            return;
        }
        self.entries.retain(|(old, _)| {
            old.owner != sequence.owner || !sequence.tokens.starts_with(&old.tokens)
        });
        self.clock += 1;
        self.entries.push((sequence, self.clock));
        while self.bytes() > self.budget_bytes {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(i, _)| i)
                .expect("over budget means not empty");
            self.entries.swap_remove(oldest);
        }
    }

    /// The stored state that shares the longest prefix with `prompt`, cut to that prefix (and to
    /// at most `prompt.len() - 1` tokens, so the prompt's last token is always run). A sequence
    /// used whole is moved out; a part is copied, so the stored one stays whole for its own
    /// conversation.
    pub fn take_longest_prefix(&mut self, owner: &str, prompt: &[u32]) -> Option<Sequence> {
        self.take_longer_prefix(owner, prompt, 0)
    }

    /// Like [`PrefixStore::take_longest_prefix`], but only a prefix longer than `than` tokens.
    pub fn take_longer_prefix(
        &mut self,
        owner: &str,
        prompt: &[u32],
        than: usize,
    ) -> Option<Sequence> {
        let limit = prompt.len().saturating_sub(1);
        let (index, shared) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, (s, _))| s.owner == owner)
            .map(|(i, (s, _))| (i, shared_prefix(&s.tokens, prompt).min(limit)))
            .max_by_key(|&(_, shared)| shared)?;
        if shared < MIN_SHARED || shared <= than {
            return None;
        }
        self.clock += 1;
        let (sequence, used) = &mut self.entries[index];
        *used = self.clock;
        if shared == sequence.tokens.len() {
            return Some(self.entries.swap_remove(index).0);
        }
        Some(Sequence {
            owner: owner.to_string(),
            tokens: sequence.tokens[..shared].to_vec(),
            cache: sequence.cache.prefix(shared),
        })
    }

    /// Drops every sequence of `owner` (an end user was erased: their words may be in it).
    pub fn forget(&mut self, owner: &str) {
        self.entries.retain(|(sequence, _)| sequence.owner != owner);
    }

    /// False with a budget of 0: nothing is kept, not even the last sequence.
    pub fn enabled(&self) -> bool {
        self.budget_bytes > 0
    }

    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|(s, _)| s.cache.bytes()).sum()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

pub fn shared_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(tokens: &[u32]) -> Sequence {
        owned("a", tokens)
    }

    fn owned(owner: &str, tokens: &[u32]) -> Sequence {
        let mut cache = KvCache::new(2, 4);
        for (layer, values) in cache.keys.iter_mut().zip(cache.values.iter_mut()) {
            for &t in tokens {
                layer.extend([t as f32; 4]);
                values.extend([-(t as f32); 4]);
            }
        }
        cache.len = tokens.len();
        Sequence {
            owner: owner.to_string(),
            tokens: tokens.to_vec(),
            cache,
        }
    }

    #[test]
    fn the_longest_shared_prefix_wins_and_partial_matches_copy() {
        let system: Vec<u32> = (0..10).collect();
        let a: Vec<u32> = system.iter().copied().chain([100, 101, 102]).collect();
        let b: Vec<u32> = system.iter().copied().chain([200, 201]).collect();
        let mut store = PrefixStore::new(1 << 20);
        store.put(sequence(&a));
        store.put(sequence(&b));
        // A follow-up of conversation a takes a whole (moved out).
        let follow_up: Vec<u32> = a.iter().copied().chain([103, 104]).collect();
        let taken = store.take_longest_prefix("a", &follow_up).unwrap();
        assert_eq!(taken.tokens, a);
        assert_eq!(taken.cache.keys[1][12 * 4], 102.0);
        assert_eq!(store.len(), 1);
        // A new conversation shares only the system prompt: b's first 10 positions are copied
        // and b stays stored whole.
        let other: Vec<u32> = system.iter().copied().chain([300]).collect();
        let taken = store.take_longest_prefix("a", &other).unwrap();
        assert_eq!((taken.tokens.len(), taken.cache.len), (10, 10));
        assert_eq!(taken.cache.values[0].len(), 40);
        assert_eq!(store.len(), 1);
        // The prompt's last token is never taken from the store: it must run for its logits.
        let taken = store.take_longest_prefix("a", &b).unwrap();
        assert_eq!(taken.tokens.len(), b.len() - 1);
        assert!(store.take_longest_prefix("a", &[7, 7, 7]).is_none());
        // Another tenant's identical prompt finds nothing.
        assert!(store.take_longest_prefix("b", &b).is_none());
        store.put(owned("b", &b));
        assert_eq!(store.len(), 2, "b's copy does not replace a's");
    }

    #[test]
    fn the_budget_evicts_least_recently_used_and_extensions_replace() {
        let one = sequence(&(0..20).collect::<Vec<_>>()).cache.bytes();
        let mut store = PrefixStore::new(2 * one);
        store.put(sequence(&(0..20).collect::<Vec<_>>()));
        store.put(sequence(&(100..120).collect::<Vec<_>>()));
        // Using the first makes the second the least recently used.
        let first = store
            .take_longest_prefix("a", &(0..30).collect::<Vec<_>>())
            .unwrap();
        store.put(first);
        store.put(sequence(&(200..220).collect::<Vec<_>>()));
        assert_eq!(store.len(), 2);
        assert!(
            store
                .take_longest_prefix("a", &(100..130).collect::<Vec<_>>())
                .is_none()
        );
        assert!(store.bytes() <= 2 * one);
        // A longer version of a stored sequence replaces it (and, over budget, the least
        // recently used other one goes).
        store.put(sequence(&(200..225).collect::<Vec<_>>()));
        assert_eq!(store.len(), 1);
        let longer = store.take_longest_prefix("a", &(200..230).collect::<Vec<_>>());
        assert_eq!(longer.unwrap().tokens.len(), 25);
    }
}
