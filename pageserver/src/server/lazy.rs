//! GET: serving one range of a stored checkpoint to a lazy-restore client.
//!
//! The range is looked up in the session's checkpoint (the client's choice, the server's
//! `--serve-checkpoint`, or the newest); a `PE_PARENT` hole is followed up the parent chain.
//! The answer is an ADD_F header (flags `PE_PRESENT`, in the session's header layout) with the
//! pages that follow contiguously in one pagemap entry, at most [`MAX_GET_PAGES`]. Pagemaps are
//! decoded once per session and cached.

use std::sync::Arc;

use super::{IndexedPagemap, MAX_GET_PAGES, Session, SessionError};
use crate::protocol::{self, DstId, PAGE_SIZE, PE_PARENT, PE_PRESENT, Request, WireHeader};
use crate::store::PagemapIndex;

impl Session<'_> {
    pub(super) async fn get(&mut self, req: Request) -> Result<(), SessionError> {
        let checkpoint = match self.read_from.or(self.config.serve_checkpoint) {
            Some(c) => c,
            None => {
                let store = Arc::clone(&self.config.store);
                let latest = self.blocking(move || store.latest()).await?;
                let id = latest
                    .ok_or(SessionError::NothingToServe { peer: self.peer })?
                    .id;
                self.read_from = Some(id);
                id
            }
        };
        let pid = req.dst_id;
        let found = self
            .find_pages(checkpoint, pid, req.vaddr, req.nr_pages)
            .await?;
        let Some((refs, at_checkpoint)) = found else {
            if self.cryo {
                // Negotiated clients understand an empty answer.
                let head = WireHeader::new(protocol::add_f_word(PE_PRESENT), 0, req.vaddr, pid);
                let head = self.reply_header(head);
                return self.reply(&head).await;
            }
            return Err(SessionError::GetMissing {
                peer: self.peer,
                pid,
                vaddr: req.vaddr,
                checkpoint,
            });
        };

        let store = Arc::clone(&self.config.store);
        let n = refs.len();
        let data = self
            .blocking(move || {
                let mut out = vec![0u8; n * PAGE_SIZE];
                store.read_pages(&refs, &mut out).map(|()| out)
            })
            .await
            .map_err(|e| match e {
                SessionError::Store { peer, source, .. } => SessionError::Store {
                    peer,
                    checkpoint: at_checkpoint,
                    source,
                },
                e => e,
            })?;
        let head = WireHeader::new(protocol::add_f_word(PE_PRESENT), n as u64, req.vaddr, pid);
        let head = self.reply_header(head);
        self.reply(&head).await?;
        self.reply(&data).await
    }

    /// Finds up to `nr` pages at `vaddr`, following PE_PARENT holes up the parent chain.
    async fn find_pages(
        &mut self,
        mut checkpoint: u64,
        pid: u64,
        vaddr: u64,
        mut nr: u64,
    ) -> Result<Option<(Vec<u64>, u64)>, SessionError> {
        let dst = DstId::pid(pid);
        for _ in 0..1024 {
            let Some(pm) = self.cached_pagemap(checkpoint, dst).await? else {
                return Ok(None);
            };
            let Some(at) = pm.1.locate(vaddr) else {
                return Ok(None);
            };
            // A hole in the child may be shorter than the parent's entry.
            let nr_here = nr.min(at.pages_left).min(MAX_GET_PAGES);
            if let Some(ri) = at.ref_index {
                let (ri, n) = (ri as usize, nr_here as usize);
                return Ok(Some((pm.0.refs[ri..ri + n].to_vec(), checkpoint)));
            }
            nr = nr_here;
            if at.flags & PE_PARENT == 0 {
                return Ok(None);
            }
            let store = Arc::clone(&self.config.store);
            let info = self.blocking(move || store.checkpoint(checkpoint)).await?;
            match info.parent {
                Some(p) => checkpoint = p,
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    async fn cached_pagemap(
        &mut self,
        checkpoint: u64,
        dst: DstId,
    ) -> Result<Option<Arc<IndexedPagemap>>, SessionError> {
        if let Some(p) = self.pagemap_cache.get(&(checkpoint, dst)) {
            return Ok(p.clone());
        }
        let store = Arc::clone(&self.config.store);
        let pm = self
            .blocking(move || store.pagemap(checkpoint, dst))
            .await?
            .map(|pm| {
                let index = PagemapIndex::new(&pm);
                Arc::new((pm, index))
            });
        self.pagemap_cache.insert((checkpoint, dst), pm.clone());
        Ok(pm)
    }
}
