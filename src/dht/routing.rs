//! The routing table: 160 k-buckets by XOR distance from this node's id, each holding at most
//! [`K`] contacts, least recently seen first, with a replacement cache of at most [`K`]
//! (Entangled's `OptimizedTreeRoutingTable` keeps the same bounds; one bucket per prefix
//! length here replaces its bucket splitting, which ends in the same partition around the
//! node's own id).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use super::{Id, K};

/// A remote node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Contact {
    pub id: Id,
    pub addr: SocketAddr,
}

/// XOR distance, compared as a 160-bit big-endian number.
pub fn distance(a: &Id, b: &Id) -> Id {
    let mut d = [0u8; 20];
    for i in 0..20 {
        d[i] = a[i] ^ b[i];
    }
    d
}

/// Index of the bucket for `id` seen from `own`: the number of leading bits they share.
fn bucket_index(own: &Id, id: &Id) -> Option<usize> {
    let d = distance(own, id);
    let lead: usize = d
        .iter()
        .position(|&b| b != 0)
        .map(|i| i * 8 + d[i].leading_zeros() as usize)?;
    Some(lead)
}

#[derive(Debug)]
struct Bucket {
    contacts: VecDeque<Contact>,
    replacements: VecDeque<Contact>,
    last_accessed: Instant,
}

/// What adding a contact did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// New, or moved to the tail as the most recently seen.
    Stored,
    /// The bucket is full: the contact waits in the replacement cache, and the bucket's head
    /// (least recently seen) should be pinged; if it does not answer, [`Table::remove`] it.
    Full { head: Contact },
    /// Our own id: ignored.
    Own,
}

#[derive(Debug)]
pub struct Table {
    own: Id,
    buckets: Vec<Bucket>,
}

impl Table {
    pub fn new(own: Id) -> Table {
        let now = Instant::now();
        Table {
            own,
            buckets: (0..160)
                .map(|_| Bucket {
                    contacts: VecDeque::new(),
                    replacements: VecDeque::new(),
                    last_accessed: now,
                })
                .collect(),
        }
    }

    pub fn own(&self) -> &Id {
        &self.own
    }

    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.contacts.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn add(&mut self, c: Contact) -> Added {
        let Some(i) = bucket_index(&self.own, &c.id) else {
            return Added::Own;
        };
        let b = &mut self.buckets[i];
        if let Some(pos) = b.contacts.iter().position(|x| x.id == c.id) {
            b.contacts.remove(pos);
            b.contacts.push_back(c);
            return Added::Stored;
        }
        if b.contacts.len() < K {
            b.contacts.push_back(c);
            return Added::Stored;
        }
        b.replacements.retain(|x| x.id != c.id);
        if b.replacements.len() >= K {
            b.replacements.pop_front();
        }
        b.replacements.push_back(c);
        Added::Full {
            head: b.contacts[0],
        }
    }

    /// Drops a contact that stopped answering; the newest replacement takes its place.
    pub fn remove(&mut self, id: &Id) {
        let Some(i) = bucket_index(&self.own, id) else {
            return;
        };
        let b = &mut self.buckets[i];
        b.replacements.retain(|x| x.id != *id);
        if let Some(pos) = b.contacts.iter().position(|x| x.id == *id) {
            b.contacts.remove(pos);
            if let Some(r) = b.replacements.pop_back() {
                b.contacts.push_back(r);
            }
        }
    }

    pub fn get(&self, id: &Id) -> Option<Contact> {
        let i = bucket_index(&self.own, id)?;
        self.buckets[i]
            .contacts
            .iter()
            .find(|c| c.id == *id)
            .copied()
    }

    /// Up to `count` contacts closest to `key`, closest first, without `exclude` (the
    /// asking node, as the original leaves it out).
    pub fn closest(&self, key: &Id, count: usize, exclude: Option<&Id>) -> Vec<Contact> {
        let mut all: Vec<Contact> = self
            .buckets
            .iter()
            .flat_map(|b| b.contacts.iter().copied())
            .filter(|c| Some(&c.id) != exclude)
            .collect();
        all.sort_by_key(|c| distance(&c.id, key));
        all.truncate(count);
        all
    }

    /// Every contact, for saving the table.
    pub fn all(&self) -> Vec<Contact> {
        self.buckets
            .iter()
            .flat_map(|b| b.contacts.iter().copied())
            .collect()
    }

    /// Marks the bucket of `key` as looked up now.
    pub fn touch(&mut self, key: &Id) {
        if let Some(i) = bucket_index(&self.own, key) {
            self.buckets[i].last_accessed = Instant::now();
        }
    }

    /// Ids to look up to refresh the buckets not looked up for `stale`: one random id in the
    /// range of each, for the buckets up to the first empty one past the farthest-reaching
    /// contact (the buckets a splitting table would have).
    pub fn refresh_ids(&self, stale: Duration) -> Vec<Id> {
        let deepest = self
            .buckets
            .iter()
            .rposition(|b| !b.contacts.is_empty())
            .map_or(0, |i| (i + 1).min(159));
        let now = Instant::now();
        (0..=deepest)
            .filter(|&i| now.duration_since(self.buckets[i].last_accessed) >= stale)
            .map(|i| self.random_id_in(i))
            .collect()
    }

    /// A random id sharing exactly `i` leading bits with our own.
    fn random_id_in(&self, i: usize) -> Id {
        let mut id: Id = rand::thread_rng().gen();
        for bit in 0..=i {
            let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
            let own = self.own[byte] & mask;
            let want = if bit == i { own ^ mask } else { own };
            id[byte] = (id[byte] & !mask) | want;
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: Id, port: u16) -> Contact {
        Contact {
            id,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[test]
    fn buckets_hold_k_and_replace_the_dead() {
        let own = [0u8; 20];
        let mut t = Table::new(own);
        // All in bucket 0 (first bit set).
        let ids: Vec<Id> = (0..(K as u8 + 2))
            .map(|i| {
                let mut id = [0u8; 20];
                id[0] = 0x80;
                id[19] = i;
                id
            })
            .collect();
        for (n, id) in ids.iter().enumerate() {
            let r = t.add(c(*id, n as u16));
            if n < K {
                assert_eq!(r, Added::Stored);
            } else {
                assert_eq!(r, Added::Full { head: c(ids[0], 0) });
            }
        }
        assert_eq!(t.len(), K);
        t.remove(&ids[0]);
        assert_eq!(t.len(), K);
        assert!(t.get(&ids[K + 1]).is_some(), "newest replacement promoted");
        assert_eq!(t.add(c(own, 1)), Added::Own);
    }

    #[test]
    fn closest_sorts_by_xor_distance_and_excludes() {
        let mut t = Table::new([0u8; 20]);
        for i in 1..=20u8 {
            let mut id = [0u8; 20];
            id[19] = i;
            t.add(c(id, i as u16));
        }
        let mut key = [0u8; 20];
        key[19] = 5;
        let got = t.closest(&key, 3, Some(&key));
        let last: Vec<u8> = got.iter().map(|c| c.id[19]).collect();
        assert_eq!(last, vec![4, 7, 6]);
    }

    #[test]
    fn refresh_ids_fall_in_their_buckets() {
        let own: Id = rand::random();
        let mut t = Table::new(own);
        let mut far = own;
        far[0] ^= 0x80;
        t.add(c(far, 1));
        let mut near = own;
        near[2] ^= 0x01; // shares 23 bits
        t.add(c(near, 2));
        let ids = t.refresh_ids(Duration::ZERO);
        assert_eq!(ids.len(), 25);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(bucket_index(&own, id), Some(i));
        }
    }
}
