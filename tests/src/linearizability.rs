//! A linearizability checker for registry histories, independent of the
//! registry's code: Wing & Gong's search with Lowe's memoization (as
//! Porcupine does it), over a model of one record per key.
//!
//! A history is the calls clients made, each with the instants it was sent
//! and answered, as one test process saw them. Linearizability is local
//! (Herlihy & Wing), so each key is checked on its own. A write whose outcome
//! is unknown (`lgsp-outcome: unknown`, or a broken connection) may take
//! effect at any instant after it was sent, or never: it has no answer
//! instant and the search need not place it.
//!
//! Written values are unique, so a read names the write it saw; a write of
//! unknown outcome that some read saw is given the revision the read shows.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// What a write asked for, and its precondition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// An unconditional put.
    None,
    /// Compare-and-set: only at this mod revision (0 is never sent: the
    /// registry reads it as "unconditional").
    ModRevision(u64),
    /// Only when the record does not exist.
    MustNotExist,
}

/// What became of a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Applied: the record's new mod revision.
    Applied(u64),
    /// Refused by the condition: certainly not applied; the record's mod
    /// revision at the time, when the refusal gave it (0: absent).
    Refused(Option<u64>),
    /// Maybe applied, maybe not.
    Unknown,
}

/// One call of the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// A put of `value` under `condition`.
    Write {
        /// The value written, unique in the history.
        value: String,
        /// The precondition.
        condition: Condition,
        /// What became of it.
        outcome: WriteOutcome,
    },
    /// A linearizable read and what it returned: the value and mod revision,
    /// or `None` when the record was absent.
    Read(Option<(String, u64)>),
}

/// A call on one key, with the instants it was sent and answered
/// (`returned` is `None` only for a write of unknown outcome).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client that made it (for reports).
    pub client: usize,
    /// The key (record) it concerns.
    pub key: String,
    /// The call and its result.
    pub call: Call,
    /// When it was sent, from the start of the history.
    pub invoked: Duration,
    /// When its answer came; `None` for an unknown outcome.
    pub returned: Option<Duration>,
}

/// The record's state in the model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Record {
    /// The value and its mod revision (`None`: written by a call of unknown
    /// outcome that no read saw).
    current: Option<(String, Option<u64>)>,
    /// The highest mod revision the record has had: revisions only grow.
    floor: u64,
}

impl Record {
    fn revision(&self) -> Option<u64> {
        match &self.current {
            None => Some(0),
            Some((_, r)) => *r,
        }
    }

    /// The state after `call`, or `None` when `call` cannot happen now.
    /// For a write of unknown outcome, the state when it takes effect.
    fn step(&self, call: &Call, resolved: Option<u64>) -> Option<Record> {
        match call {
            Call::Read(seen) => {
                let now = match &self.current {
                    None => None,
                    Some((v, Some(r))) => Some((v.clone(), *r)),
                    // Written at a revision no read saw: no read returns it.
                    Some((_, None)) => return None,
                };
                (now == *seen).then(|| self.clone())
            }
            Call::Write {
                value,
                condition,
                outcome,
            } => {
                let holds = match condition {
                    Condition::None => Some(true),
                    Condition::MustNotExist => Some(self.current.is_none()),
                    // Against a revision nobody saw, a condition cannot be
                    // judged: no client could have known it.
                    Condition::ModRevision(e) => self.revision().map(|r| r == *e),
                };
                match outcome {
                    WriteOutcome::Refused(reported) => {
                        let refused = holds != Some(true);
                        let agrees = match (reported, self.revision()) {
                            (Some(reported), Some(actual)) => *reported == actual,
                            _ => true,
                        };
                        (refused && agrees).then(|| self.clone())
                    }
                    WriteOutcome::Applied(r) => self.written(holds, value, Some(*r)),
                    WriteOutcome::Unknown => self.written(holds, value, resolved),
                }
            }
        }
    }

    fn written(&self, holds: Option<bool>, value: &str, revision: Option<u64>) -> Option<Record> {
        if holds != Some(true) || revision.is_some_and(|r| r <= self.floor) {
            return None;
        }
        Some(Record {
            current: Some((value.to_owned(), revision)),
            floor: revision.unwrap_or(self.floor),
        })
    }
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key whose calls cannot be ordered.
    pub key: String,
    /// That key's calls, in the order they were sent.
    pub operations: Vec<Operation>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "the calls on {} are not linearizable:", self.key)?;
        for op in &self.operations {
            writeln!(
                f,
                "  client {} {:>10.3?} .. {:>10.3?}  {:?}",
                op.client,
                op.invoked,
                op.returned.unwrap_or(Duration::MAX),
                op.call
            )?;
        }
        Ok(())
    }
}

/// Checks `history`; every key's calls must be linearizable.
pub fn check(history: &[Operation]) -> Result<(), Box<Violation>> {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    for (key, mut ops) in by_key {
        ops.sort_by_key(|op| op.invoked);
        if !check_key(&ops) {
            return Err(Box::new(Violation {
                key: key.to_owned(),
                operations: ops,
            }));
        }
    }
    Ok(())
}

/// One event of the search's list: a call or an answer of operation `op`.
#[derive(Clone, Copy, Debug)]
struct Event {
    op: usize,
    answer: bool,
    prev: usize,
    next: usize,
}

/// Wing & Gong's search: take the first call still pending whose effect the
/// model allows, or back up when an answer comes before its call was taken.
fn check_key(ops: &[Operation]) -> bool {
    // The revision of each write of unknown outcome that a read saw.
    let seen: BTreeMap<&str, u64> = ops
        .iter()
        .filter_map(|op| match &op.call {
            Call::Read(Some((v, r))) => Some((v.as_str(), *r)),
            _ => None,
        })
        .collect();
    let resolved: Vec<Option<u64>> = ops
        .iter()
        .map(|op| match &op.call {
            Call::Write { value, .. } => seen.get(value.as_str()).copied(),
            Call::Read(_) => None,
        })
        .collect();

    // Events in time order, an answer after a call at the same instant;
    // index 0 is the head of the list, `END` its end.
    let mut timed: Vec<(Duration, bool, usize)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        timed.push((op.invoked, false, i));
        if let Some(r) = op.returned {
            timed.push((r, true, i));
        }
    }
    timed.sort();
    const END: usize = usize::MAX;
    let mut events = vec![Event {
        op: usize::MAX,
        answer: false,
        prev: END,
        next: END,
    }];
    let mut call_at = vec![0; ops.len()];
    let mut answer_at = vec![None; ops.len()];
    for (_, answer, op) in timed {
        let at = events.len();
        events[at - 1].next = at;
        events.push(Event {
            op,
            answer,
            prev: at - 1,
            next: END,
        });
        if answer {
            answer_at[op] = Some(at);
        } else {
            call_at[op] = at;
        }
    }
    let unlink = |events: &mut Vec<Event>, at: usize| {
        let Event { prev, next, .. } = events[at];
        events[prev].next = next;
        if next != END {
            events[next].prev = prev;
        }
    };
    let relink = |events: &mut Vec<Event>, at: usize| {
        let Event { prev, next, .. } = events[at];
        events[prev].next = at;
        if next != END {
            events[next].prev = at;
        }
    };

    let definite = ops.iter().filter(|op| op.returned.is_some()).count();
    let mut done = 0;
    let mut taken = vec![false; ops.len()];
    let mut state = Record {
        current: None,
        floor: 0,
    };
    let mut stack: Vec<(usize, Record)> = Vec::new();
    let mut visited: HashSet<(Vec<bool>, Record)> = HashSet::new();
    let mut at = events[0].next;
    loop {
        if done == definite {
            return true;
        }
        if at != END && !events[at].answer {
            let op = events[at].op;
            let next = state.step(&ops[op].call, resolved[op]);
            if let Some(next) = next {
                taken[op] = true;
                if visited.insert((taken.clone(), next.clone())) {
                    stack.push((op, std::mem::replace(&mut state, next)));
                    if ops[op].returned.is_some() {
                        done += 1;
                    }
                    unlink(&mut events, call_at[op]);
                    if let Some(a) = answer_at[op] {
                        unlink(&mut events, a);
                    }
                    at = events[0].next;
                    continue;
                }
                taken[op] = false;
            }
            at = events[at].next;
        } else {
            // An answer whose call could not be taken first (or the end):
            // undo the last choice and try the next call after it.
            let Some((op, previous)) = stack.pop() else {
                return false;
            };
            state = previous;
            taken[op] = false;
            if ops[op].returned.is_some() {
                done -= 1;
            }
            if let Some(a) = answer_at[op] {
                relink(&mut events, a);
            }
            relink(&mut events, call_at[op]);
            at = events[call_at[op]].next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn op(client: usize, call: Call, invoked: u64, returned: Option<u64>) -> Operation {
        Operation {
            client,
            key: "k".into(),
            call,
            invoked: ms(invoked),
            returned: returned.map(ms),
        }
    }

    fn put(value: &str, condition: Condition, outcome: WriteOutcome) -> Call {
        Call::Write {
            value: value.into(),
            condition,
            outcome,
        }
    }

    fn read(seen: Option<(&str, u64)>) -> Call {
        Call::Read(seen.map(|(v, r)| (v.to_owned(), r)))
    }

    #[test]
    fn sequential_puts_and_reads_are_linearizable() {
        let h = [
            op(0, read(None), 0, Some(1)),
            op(
                0,
                put("a", Condition::MustNotExist, WriteOutcome::Applied(2)),
                2,
                Some(3),
            ),
            op(1, read(Some(("a", 2))), 4, Some(5)),
            op(
                1,
                put("b", Condition::ModRevision(2), WriteOutcome::Applied(5)),
                6,
                Some(7),
            ),
            op(
                0,
                put(
                    "c",
                    Condition::ModRevision(2),
                    WriteOutcome::Refused(Some(5)),
                ),
                8,
                Some(9),
            ),
            op(0, read(Some(("b", 5))), 10, Some(11)),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn a_read_after_an_acknowledged_write_that_misses_it_is_caught() {
        let h = [
            op(
                0,
                put("a", Condition::None, WriteOutcome::Applied(2)),
                0,
                Some(1),
            ),
            op(1, read(None), 2, Some(3)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_stale_read_is_caught() {
        let h = [
            op(
                0,
                put("a", Condition::None, WriteOutcome::Applied(2)),
                0,
                Some(1),
            ),
            op(
                0,
                put("b", Condition::None, WriteOutcome::Applied(3)),
                2,
                Some(3),
            ),
            op(1, read(Some(("a", 2))), 4, Some(5)),
        ];
        let violation = check(&h).unwrap_err();
        assert_eq!(violation.key, "k");
        assert!(violation.to_string().contains("not linearizable"));
    }

    #[test]
    fn a_compare_and_set_refused_at_the_current_revision_is_caught() {
        // The scenario: a follower behind refuses naming an old revision.
        let h = [
            op(
                0,
                put("a", Condition::None, WriteOutcome::Applied(2)),
                0,
                Some(1),
            ),
            op(
                0,
                put(
                    "b",
                    Condition::ModRevision(2),
                    WriteOutcome::Refused(Some(1)),
                ),
                2,
                Some(3),
            ),
        ];
        assert!(check(&h).is_err());
        let h = [
            op(
                0,
                put("a", Condition::None, WriteOutcome::Applied(2)),
                0,
                Some(1),
            ),
            op(
                0,
                put("b", Condition::ModRevision(2), WriteOutcome::Refused(None)),
                2,
                Some(3),
            ),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn reads_that_go_back_in_time_are_caught_even_when_concurrent_with_the_write() {
        // Both reads overlap the write, but once one saw it the next cannot miss it.
        let h = [
            op(
                0,
                put("a", Condition::None, WriteOutcome::Applied(2)),
                0,
                Some(10),
            ),
            op(1, read(Some(("a", 2))), 1, Some(2)),
            op(2, read(None), 3, Some(4)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn concurrent_calls_may_take_effect_in_either_order() {
        let h = [
            op(
                0,
                put("a", Condition::MustNotExist, WriteOutcome::Applied(3)),
                0,
                Some(10),
            ),
            op(
                1,
                put("b", Condition::MustNotExist, WriteOutcome::Refused(Some(3))),
                1,
                Some(9),
            ),
            op(2, read(None), 2, Some(3)),
            op(2, read(Some(("a", 3))), 4, Some(5)),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn a_write_of_unknown_outcome_may_take_effect_late_or_never() {
        let seen_later = [
            op(0, put("a", Condition::None, WriteOutcome::Unknown), 0, None),
            op(1, read(None), 5, Some(6)),
            op(1, read(Some(("a", 4))), 7, Some(8)),
        ];
        assert_eq!(check(&seen_later), Ok(()));
        let never = [
            op(0, put("a", Condition::None, WriteOutcome::Unknown), 0, None),
            op(1, read(None), 5, Some(6)),
        ];
        assert_eq!(check(&never), Ok(()));
        // But it cannot take effect before it was sent.
        let too_early = [
            op(1, read(Some(("a", 4))), 0, Some(1)),
            op(0, put("a", Condition::None, WriteOutcome::Unknown), 2, None),
        ];
        assert!(check(&too_early).is_err());
    }

    #[test]
    fn revisions_of_a_record_only_grow() {
        let h = [
            op(
                0,
                put("a", Condition::None, WriteOutcome::Applied(5)),
                0,
                Some(1),
            ),
            op(
                0,
                put("b", Condition::None, WriteOutcome::Applied(4)),
                2,
                Some(3),
            ),
        ];
        assert!(check(&h).is_err());
    }
}
