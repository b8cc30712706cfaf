//! The drafts the server saw, for the providers whose events do not say that a pull request
//! was a draft before: Bitbucket Cloud, Bitbucket Data Center and Azure DevOps.
//!
//! GitHub says it (`ready_for_review`), GitLab too (`changes.draft`), and Gitea by the title
//! the edit took away. The three others send an update of the pull request, now not a draft,
//! and nothing that tells a draft published from any other update of a pull request that was
//! never one. So the server remembers the open drafts it sees in any event, and comments on the
//! first update that shows one of them published, once: it is forgotten then (and remembered
//! again if that comment fails, for the update delivered again to get it; when the provider may
//! have posted it, for that update only, not for the next one). Azure DevOps
//! also names the change in the event's message ("... published the pull request"), which
//! holds for a draft the server did not see.
//!
//! The memory is bounded (`MAX_REMEMBERED_DRAFTS`): past the bound, the draft seen least
//! recently is forgotten. It is kept in memory only: a draft seen before a restart, and not
//! seen again after it (in any of its events, a push included), is published without a
//! comment.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde_json::Value;

use super::{Comment, Forge};

/// One pull request: its provider, its repository and its id there.
pub(crate) type DraftKey = (Forge, String, u64);

/// A draft published, taken from the memory for its comment: put back if the comment fails.
#[derive(Clone, Debug)]
pub(crate) struct TakenDraft {
    key: DraftKey,
    /// The only delivery whose update of it gets the comment, if it was kept for one.
    only_for: Option<String>,
}

/// What an event shows of its pull request's draft state.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// An open draft.
    Draft,
    /// Open, not a draft. `reveals`: the event is one that a draft published comes with (not
    /// a comment, whose answer is the delivery's comment). `published`: the event says the
    /// pull request was published.
    Ready { reveals: bool, published: bool },
    /// Merged, declined, abandoned or deleted.
    Closed,
}

/// The open drafts seen lately, at most `capacity` of them.
#[derive(Debug)]
pub(crate) struct DraftMemory {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each draft, when it was last seen (a counter), and the only delivery whose update of it
    /// gets the comment of a draft published, if any: the one whose comment may have been
    /// posted, delivered again.
    seen_at: HashMap<DraftKey, (u64, Option<String>)>,
    /// The same, by when: the first one is the least recently seen.
    by_age: BTreeMap<u64, DraftKey>,
    next: u64,
}

impl DraftMemory {
    /// A memory of at most `capacity` drafts (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers `key` as a draft seen now; past the capacity, the least recently seen goes.
    pub(crate) fn remember(&self, key: DraftKey) {
        self.remember_for(key, None);
    }

    /// Puts `taken`, the draft published whose comment failed or could not be queued, back in
    /// the memory, for the delivery delivered again to get that comment. With `maybe_posted_by`,
    /// the delivery whose comment the provider may have posted (it failed after receiving it):
    /// only that delivery, delivered again, gets the comment then, not another update of the
    /// pull request, which would post it a second time; without a delivery id (`-`), none does.
    /// A draft seen again meanwhile stays as it is.
    pub(crate) fn put_back(&self, taken: TakenDraft, maybe_posted_by: Option<&str>) {
        let only_for = match maybe_posted_by {
            Some("-") => return,
            Some(delivery) => Some(delivery.to_owned()),
            None => taken.only_for,
        };
        let seen_again = self
            .lock()
            .seen_at
            .get(&taken.key)
            .is_some_and(|(_, only)| only.is_none());
        if only_for.is_some() && seen_again {
            return;
        }
        self.remember_for(taken.key, only_for);
    }

    fn remember_for(&self, key: DraftKey, only_for: Option<String>) {
        let mut inner = self.lock();
        let at = inner.next;
        inner.next += 1;
        if let Some((before, _)) = inner.seen_at.insert(key.clone(), (at, only_for)) {
            inner.by_age.remove(&before);
        }
        inner.by_age.insert(at, key);
        while inner.seen_at.len() > self.capacity {
            let Some((_, oldest)) = inner.by_age.pop_first() else {
                break;
            };
            inner.seen_at.remove(&oldest);
        }
    }

    /// Forgets `key`; whether it was remembered.
    pub(crate) fn forget(&self, key: &DraftKey) -> bool {
        let mut inner = self.lock();
        match inner.seen_at.remove(key) {
            Some((at, _)) => {
                inner.by_age.remove(&at);
                true
            }
            None => false,
        }
    }

    /// Takes `key` out of the memory as published by `delivery`, if it was remembered as a draft
    /// whose comment that delivery gets. One kept for the redelivery of another delivery stays.
    fn take(&self, key: &DraftKey, delivery: &str) -> Option<TakenDraft> {
        let mut inner = self.lock();
        let (at, only_for) = inner.seen_at.get(key)?.clone();
        if only_for.as_deref().is_some_and(|only| only != delivery) {
            return None;
        }
        inner.seen_at.remove(key);
        inner.by_age.remove(&at);
        Some(TakenDraft {
            key: key.clone(),
            only_for,
        })
    }

    /// The comment a delivery asks for ([`super::comment_for`]), or else the comment of a
    /// draft published, with the draft it took from the memory: put it back if the
    /// comment cannot be queued, so the provider's next attempt gets it. Updates the memory
    /// with what the delivery (of id `delivery`) shows.
    pub(crate) fn comment_for(
        &self,
        forge: Forge,
        event: Option<&str>,
        delivery: &str,
        p: &Value,
    ) -> Option<(Comment, Option<TakenDraft>)> {
        let stateless = super::comment_for(forge, event, p);
        let Some((key, seen)) = observe(forge, event, p) else {
            return stateless.map(|c| (c, None));
        };
        match seen {
            Seen::Draft => {
                self.remember(key);
                stateless.map(|c| (c, None))
            }
            Seen::Closed => {
                self.forget(&key);
                stateless.map(|c| (c, None))
            }
            // A comment on a published draft leaves it to the next update.
            Seen::Ready { reveals: false, .. } => stateless.map(|c| (c, None)),
            Seen::Ready {
                reveals: true,
                published,
            } => {
                let taken = self.take(&key, delivery);
                if let Some(c) = stateless {
                    return Some((c, None));
                }
                if taken.is_none() && !published {
                    return None;
                }
                let comment = super::draft_published(forge, p)?;
                Some((comment, taken))
            }
        }
    }
}

/// The pull request of an event of the three providers, and what the event shows of it.
fn observe(forge: Forge, event: Option<&str>, p: &Value) -> Option<(DraftKey, Seen)> {
    // `None` when the payload does not say (servers before drafts).
    let draft = |v: &Value| v.as_bool();
    match forge {
        Forge::Bitbucket => {
            let event = event?.strip_prefix("pullrequest:")?;
            let pr = &p["pullrequest"];
            let key = (
                forge,
                p["repository"]["full_name"].as_str()?.to_owned(),
                pr["id"].as_u64()?,
            );
            // OPEN, MERGED, DECLINED or SUPERSEDED.
            let open = pr["state"].as_str().is_none_or(|state| state == "OPEN")
                && !matches!(event, "fulfilled" | "rejected");
            let reveals = !event.starts_with("comment_");
            Some((key, seen(open, draft(&pr["draft"]), reveals, false)?))
        }
        Forge::BitbucketServer => {
            let event = event?.strip_prefix("pr:")?;
            let pr = &p["pullRequest"];
            let repo = &pr["toRef"]["repository"];
            let key = (
                forge,
                format!(
                    "{}/{}",
                    repo["project"]["key"].as_str()?,
                    repo["slug"].as_str()?
                ),
                pr["id"].as_u64()?,
            );
            // OPEN, MERGED or DECLINED.
            let open = pr["state"].as_str().is_none_or(|state| state == "OPEN")
                && !matches!(event, "merged" | "declined" | "deleted");
            let reveals = !event.starts_with("comment:");
            Some((key, seen(open, draft(&pr["draft"]), reveals, false)?))
        }
        Forge::AzureDevOps => {
            let event = p["eventType"].as_str()?;
            let pr = match event {
                "git.pullrequest.created"
                | "git.pullrequest.updated"
                | "git.pullrequest.merged" => &p["resource"],
                "ms.vss-code.git-pullrequest-comment-event" => &p["resource"]["pullRequest"],
                _ => return None,
            };
            let key = (
                forge,
                pr["repository"]["id"].as_str()?.to_owned(),
                pr["pullRequestId"].as_u64()?,
            );
            // active, abandoned or completed.
            let open = pr["status"]
                .as_str()
                .is_none_or(|status| status == "active");
            let updated = event == "git.pullrequest.updated";
            // The message of a draft published, as the service writes it in English.
            let published = updated
                && p["message"]["text"]
                    .as_str()
                    .is_some_and(|text| text.contains(" published the pull request"));
            Some((key, seen(open, draft(&pr["isDraft"]), updated, published)?))
        }
        _ => None,
    }
}

/// What an event shows: closed, or else a draft or not when the payload says, or when it says
/// the draft was published (Azure DevOps' samples of its events have no `isDraft`: a payload
/// without it may still say "published").
fn seen(open: bool, draft: Option<bool>, reveals: bool, published: bool) -> Option<Seen> {
    if !open {
        return Some(Seen::Closed);
    }
    Some(match draft {
        Some(true) => Seen::Draft,
        Some(false) => Seen::Ready { reveals, published },
        None if published => Seen::Ready { reveals, published },
        None => return None,
    })
}
