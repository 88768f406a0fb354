//! Shared names, so that yielding a record does not allocate: the names of
//! a trace's devices and GFP flag sets are few, and each is allocated once.

use std::collections::HashSet;
use std::sync::Arc;

/// At most this many names are kept; past it (a corrupt or hostile input)
/// each record gets a fresh name, so memory stays bounded.
const MAX_NAMES: usize = 4096;

#[derive(Default)]
pub(crate) struct Intern {
    last: Option<Arc<str>>,
    names: HashSet<Arc<str>>,
}

impl Intern {
    pub(crate) fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(last) = &self.last {
            if &**last == name {
                return last.clone();
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
        self.last = Some(arc.clone());
        arc
    }
}
