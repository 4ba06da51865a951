//! An in-memory [`KvEngine`] over a `BTreeMap`, for unit tests: no disk, and
//! reads can be made to fail on purpose to prove errors surface.

use crate::error::StoreError;
use crate::kv::{Batch, Entries, KvEngine};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Work a test runs just before a range read, as if another thread wrote
/// at that very moment.
struct Hook {
    prefix: Vec<u8>,
    run: Box<dyn FnOnce() + Send>,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct State {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Reads of keys starting with one of these fail.
    failing: Vec<Vec<u8>>,
    /// Run (once each) before the next range read starting in their prefix.
    before_range: Vec<Hook>,
    /// Pairs handed out by range reads so far.
    pairs_read: usize,
}

/// A `BTreeMap` as a [`KvEngine`]; clones share the same map. Each batch is
/// applied under one lock; `flush` does nothing, as nothing outlives the
/// process.
#[derive(Clone, Debug, Default)]
pub struct MemKv {
    state: Arc<Mutex<State>>,
}

impl MemKv {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every later read of a key starting with `prefix` fail.
    pub fn fail_reads(&self, prefix: &[u8]) {
        self.state().failing.push(prefix.to_vec());
    }

    /// Runs `hook` once, just before the next range read whose start key
    /// begins with `prefix`: a write racing that read, at the one moment a
    /// test wants it. The hook may use the store itself.
    pub fn before_range(&self, prefix: &[u8], hook: impl FnOnce() + Send + 'static) {
        self.state().before_range.push(Hook {
            prefix: prefix.to_vec(),
            run: Box::new(hook),
        });
    }

    /// How many key-value pairs range reads have handed out so far: what a
    /// test measures to prove a reader holds a bounded number at a time.
    pub fn pairs_read(&self) -> usize {
        self.state().pairs_read
    }

    fn check(state: &State, key: &[u8]) -> Result<(), StoreError> {
        if state.failing.iter().any(|p| key.starts_with(p)) {
            return Err(StoreError::Engine(format!(
                "injected read failure at {}",
                String::from_utf8_lossy(key)
            )));
        }
        Ok(())
    }
}

/// Pairs read from the store a page at a time as the caller iterates, as
/// sled does: the lock is not held between pages, and a reader that stops
/// early has read only what it used.
struct Pages {
    kv: MemKv,
    /// Where the next page starts; `None` when the range is exhausted.
    next: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    page: std::collections::VecDeque<Pair>,
}

const PAGE: usize = 16;

/// One key-value pair of a range read, or why it could not be read.
type Pair = Result<(Vec<u8>, Vec<u8>), StoreError>;

impl Iterator for Pages {
    type Item = Pair;

    fn next(&mut self) -> Option<Self::Item> {
        if self.page.is_empty() {
            let start = self.next.take()?;
            let state = self.kv.state();
            let end = self.end.as_deref();
            let mut keys = state
                .map
                .range(start..)
                .take_while(|(k, _)| end.is_none_or(|end| k.as_slice() < end));
            for (k, v) in keys.by_ref().take(PAGE) {
                self.page.push_back(Self::check_pair(&state, k, v));
            }
            if let Some((k, _)) = keys.next() {
                self.next = Some(k.clone());
            }
        }
        let item = self.page.pop_front()?;
        self.kv.state().pairs_read += 1;
        Some(item)
    }
}

impl Pages {
    fn check_pair(state: &State, k: &[u8], v: &[u8]) -> Pair {
        MemKv::check(state, k)?;
        Ok((k.to_vec(), v.to_vec()))
    }
}

impl KvEngine for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let state = self.state();
        Self::check(&state, key)?;
        Ok(state.map.get(key).cloned())
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>) -> Entries<'_> {
        let hooks: Vec<Hook> = {
            let mut state = self.state();
            let (due, later) = std::mem::take(&mut state.before_range)
                .into_iter()
                .partition(|h| start.starts_with(&h.prefix));
            state.before_range = later;
            due
        };
        // Outside the lock: a hook may read and write this store.
        for hook in hooks {
            (hook.run)();
        }
        Box::new(Pages {
            kv: self.clone(),
            next: Some(start.to_vec()),
            end: end.map(<[u8]>::to_vec),
            page: std::collections::VecDeque::new(),
        })
    }

    fn last_key(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let state = self.state();
        Self::check(&state, prefix)?;
        Ok(state
            .map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .last()
            .map(|(k, _)| k.clone()))
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let mut state = self.state();
        for (key, value) in batch {
            match value {
                Some(v) => state.map.insert(key, v),
                None => state.map.remove(&key),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{Kv, KvRead, Staged, prefix_end, read_u64};

    #[test]
    fn staged_writes_are_read_back_before_commit_and_land_in_one_batch() {
        let kv = Kv::new(MemKv::default());
        let mut setup = Staged::new(&kv);
        setup.insert(b"k1".as_slice(), b"old".as_slice());
        setup.insert(b"k2".as_slice(), b"gone".as_slice());
        setup.commit().unwrap();
        let mut staged = Staged::new(&kv);
        staged.insert(b"k1".as_slice(), b"new".as_slice());
        staged.remove(b"k2".as_slice());
        staged.insert(b"k3".as_slice(), b"added".as_slice());
        assert_eq!(staged.read(b"k1").unwrap().unwrap(), b"new");
        assert_eq!(staged.read(b"k2").unwrap(), None);
        // Nothing reaches the store before the commit.
        assert_eq!(kv.get(b"k1").unwrap().unwrap(), b"old");
        assert_eq!(kv.get(b"k3").unwrap(), None);
        staged.commit().unwrap();
        assert_eq!(kv.get(b"k1").unwrap().unwrap(), b"new");
        assert_eq!(kv.get(b"k2").unwrap(), None);
        assert_eq!(kv.get(b"k3").unwrap().unwrap(), b"added");
    }

    #[test]
    fn scan_prefix_returns_only_keys_with_the_prefix_in_order() {
        let kv = Kv::new(MemKv::default());
        let mut batch = Staged::new(&kv);
        for key in [b"a:2".as_slice(), b"a:1", b"a;", b"a", b"b:1"] {
            batch.insert(key, b"v".as_slice());
        }
        batch.commit().unwrap();
        let keys: Vec<Vec<u8>> = kv.scan_prefix(b"a:").map(|e| e.unwrap().0).collect();
        assert_eq!(keys, vec![b"a:1".to_vec(), b"a:2".to_vec()]);
        assert_eq!(kv.last_key(b"a:").unwrap(), Some(b"a:2".to_vec()));
        assert_eq!(kv.last_key(b"c").unwrap(), None);
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
    }

    #[test]
    fn a_damaged_integer_is_an_error_not_zero() {
        let kv = Kv::new(MemKv::default());
        let mut batch = Staged::new(&kv);
        batch.insert(b"n".as_slice(), b"abc".as_slice());
        batch.commit().unwrap();
        assert!(matches!(
            read_u64(&kv, b"n"),
            Err(StoreError::Damaged { .. })
        ));
        assert_eq!(read_u64(&kv, b"absent").unwrap(), None);
    }
}
