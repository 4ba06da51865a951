//! An in-memory [`KvEngine`] over a `BTreeMap`, for unit tests: no disk, and
//! reads can be made to fail on purpose to prove errors surface.

use crate::error::StoreError;
use crate::kv::{Batch, Entries, KvEngine};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug, Default)]
struct State {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Reads of keys starting with one of these fail.
    failing: Vec<Vec<u8>>,
}

/// A `BTreeMap` as a [`KvEngine`]; clones share the same map.
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

impl KvEngine for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let state = self.state();
        Self::check(&state, key)?;
        Ok(state.map.get(key).cloned())
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>) -> Entries<'_> {
        let state = self.state();
        // A copy of the range: the lock is not held while the caller iterates.
        let entries: Vec<_> = state
            .map
            .range(start.to_vec()..)
            .take_while(|(k, _)| end.is_none_or(|end| k.as_slice() < end))
            .map(|(k, v)| {
                Self::check(&state, k)?;
                Ok((k.clone(), v.clone()))
            })
            .collect();
        Box::new(entries.into_iter())
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
