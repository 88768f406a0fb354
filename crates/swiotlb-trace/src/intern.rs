//! Shared names, so that yielding a record does not allocate: the names of
//! a trace's devices and GFP flag sets are few, and each is allocated once.

use std::collections::HashSet;
use std::sync::Arc;

/// At most this many names are kept; past it (a corrupt or hostile input)
/// each record gets a fresh name, so memory stays bounded.
const MAX_NAMES: usize = 4096;

/// The names most recently used, looked at before the hash set: a
/// trace's events interleave a handful of devices.
const RECENT: usize = 8;

#[derive(Default)]
pub(crate) struct Intern {
    recent: [Option<Arc<str>>; RECENT],
    next: usize,
    names: HashSet<Arc<str>>,
}

impl Intern {
    pub(crate) fn get(&mut self, name: &str) -> Arc<str> {
        for a in self.recent.iter().flatten() {
            if &**a == name {
                return a.clone();
            }
        }
        let arc = match self.names.get(name) {
            Some(a) => a.clone(),
            None => {
                let a: Arc<str> = Arc::from(name);
                if self.names.len() < MAX_NAMES {
                    self.names.insert(a.clone());
                }
                a
            }
        };
        self.recent[self.next] = Some(arc.clone());
        self.next = (self.next + 1) % RECENT;
        arc
    }
}
