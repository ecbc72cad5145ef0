//! Label values with a bound, so that no client can grow the metrics: tokenwarden's own tool
//! names as the catalogue spells them, and a configured upstream's bucket and tool names
//! interned once, at most [`MAX_BUCKETS`] buckets and [`MAX_TOOLS_PER_BUCKET`] tools of each;
//! anything beyond is labelled [`OTHER`]. Names come from the catalogue (the server's own, the
//! upstreams' tool lists), never from a request: an unknown tool is refused before any event.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// Buckets labelled by name; calls to further buckets are labelled `other`.
pub const MAX_BUCKETS: usize = 64;
/// Tools of one bucket labelled by name, first called first; further ones are `other`.
pub const MAX_TOOLS_PER_BUCKET: usize = 100;
pub const OTHER: &str = "other";

/// One label value: a name of the server's own (or `other`), or an upstream's, interned.
#[derive(Clone, Debug)]
pub enum Name {
    Fixed(&'static str),
    Interned(Arc<str>),
}

impl Name {
    pub fn as_str(&self) -> &str {
        match self {
            Name::Fixed(name) => name,
            Name::Interned(name) => name,
        }
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

struct Bucket {
    name: Arc<str>,
    tools: HashSet<Arc<str>>,
}

/// The upstream names seen so far. Reading a known name takes a read lock and clones an
/// `Arc`; only a name seen for the first time takes the write lock and allocates.
#[derive(Default)]
pub struct Names {
    buckets: RwLock<HashMap<Arc<str>, Bucket>>,
}

impl Names {
    /// The label of tokenwarden's own tool `tool`.
    pub fn own_tool(tool: &str) -> Name {
        Name::Fixed(crate::mcp::tools::static_name(tool).unwrap_or(OTHER))
    }

    /// The bucket and tool labels of a call to `tool` (its exposed name) of `bucket`.
    pub fn gateway_tool(&self, bucket: &str, tool: &str) -> (Name, Name) {
        if let Some(known) = self.read().get(bucket) {
            let bucket = Name::Interned(Arc::clone(&known.name));
            if let Some(tool) = known.tools.get(tool) {
                return (bucket, Name::Interned(Arc::clone(tool)));
            }
            if known.tools.len() >= MAX_TOOLS_PER_BUCKET {
                return (bucket, Name::Fixed(OTHER));
            }
        }
        let mut buckets = self.write();
        let Some(entry) = Self::bucket_entry(&mut buckets, bucket) else {
            return (Name::Fixed(OTHER), Name::Fixed(OTHER));
        };
        let bucket = Name::Interned(Arc::clone(&entry.name));
        if let Some(tool) = entry.tools.get(tool) {
            return (bucket, Name::Interned(Arc::clone(tool)));
        }
        if entry.tools.len() >= MAX_TOOLS_PER_BUCKET {
            return (bucket, Name::Fixed(OTHER));
        }
        let interned: Arc<str> = Arc::from(tool);
        entry.tools.insert(Arc::clone(&interned));
        (bucket, Name::Interned(interned))
    }

    /// `bucket`'s entry, made if there is room.
    fn bucket_entry<'a>(
        buckets: &'a mut HashMap<Arc<str>, Bucket>,
        bucket: &str,
    ) -> Option<&'a mut Bucket> {
        if !buckets.contains_key(bucket) {
            if buckets.len() >= MAX_BUCKETS {
                return None;
            }
            let name: Arc<str> = Arc::from(bucket);
            let entry = Bucket {
                name: Arc::clone(&name),
                tools: HashSet::new(),
            };
            buckets.insert(name, entry);
        }
        buckets.get_mut(bucket)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Bucket>> {
        self.buckets.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Arc<str>, Bucket>> {
        self.buckets.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names_are_bounded_and_own_names_are_the_catalogue_s() {
        let names = Names::default();
        let mut labels = HashSet::new();
        for n in 0..MAX_TOOLS_PER_BUCKET + 50 {
            let (bucket, tool) = names.gateway_tool("b", &format!("b__t{n}"));
            assert_eq!(bucket.as_str(), "b");
            labels.insert(tool.as_str().to_owned());
        }
        assert_eq!(
            labels.len(),
            MAX_TOOLS_PER_BUCKET + 1,
            "the first 100 and `other`"
        );
        assert!(labels.contains(OTHER));
        assert_eq!(names.gateway_tool("b", "b__t0").1.as_str(), "b__t0");
        for n in 0..MAX_BUCKETS + 5 {
            names.gateway_tool(&format!("bucket{n}"), "x");
        }
        assert_eq!(
            names.gateway_tool("late", "late__x"),
            (Name::Fixed(OTHER), Name::Fixed(OTHER))
        );
        assert_eq!(names.gateway_tool("b", "b__t1").0.as_str(), "b");
        assert_eq!(Names::own_tool("whoami").as_str(), "whoami");
        assert_eq!(Names::own_tool("anything a client sends").as_str(), OTHER);
    }
}
