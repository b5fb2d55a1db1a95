//! The per-session ingest worker: applies a session's requests to its checkpoint writer on a
//! blocking thread, so hashing, compression and disk writes never run on the reactor.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::protocol::DstId;
use crate::store::{CheckpointInfo, CheckpointWriter, Classified, StoreError};

/// What the session asks its worker to do, in stream order.
pub(super) enum Job {
    SetParent(Option<u64>),
    Open(DstId),
    Entry {
        vaddr: u64,
        nr_pages: u64,
        flags: u32,
    },
    Pages(Vec<u8>),
    Commit(oneshot::Sender<Result<CheckpointInfo, StoreError>>),
}

/// Batches being classified ahead of the one the worker appends.
const CLASSIFY_AHEAD: usize = 2;

type Pending = std::sync::mpsc::Receiver<(Vec<u8>, Classified)>;

/// Runs on a blocking thread: applies the session's jobs to its checkpoint writer. Page
/// batches are classified on the rayon pool up to [`CLASSIFY_AHEAD`] batches ahead, so
/// hashing and compression overlap the serial appends; everything else waits until the
/// batches before it are applied, keeping stream order.
pub(super) fn ingest_worker(
    mut writer: CheckpointWriter,
    mut jobs: mpsc::Receiver<Job>,
    free: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    let classifier = writer.classifier();
    let mut pending: std::collections::VecDeque<Pending> = std::collections::VecDeque::new();
    let mut failed: Option<StoreError> = None;
    let apply_oldest = |pending: &mut std::collections::VecDeque<Pending>,
                        writer: &mut CheckpointWriter,
                        failed: &mut Option<StoreError>| {
        let Some(rx) = pending.pop_front() else {
            return;
        };
        let (buf, classified) = rx.recv().expect("classification tasks always answer");
        if failed.is_none()
            && let Err(e) = writer.add_classified(&buf, classified)
        {
            *failed = Some(e);
        }
        let mut pool = free.lock().expect("buffer pool poisoned");
        if pool.len() < 8 {
            pool.push(buf);
        }
    };

    loop {
        // Apply finished work whenever no new job is waiting, so pages reach the segment
        // without waiting for the next request.
        let job = if pending.is_empty() {
            match jobs.blocking_recv() {
                Some(job) => job,
                None => break,
            }
        } else {
            match jobs.try_recv() {
                Ok(job) => job,
                Err(mpsc::error::TryRecvError::Empty) => {
                    apply_oldest(&mut pending, &mut writer, &mut failed);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        };
        if let Job::Pages(buf) = job {
            let (tx, rx) = std::sync::mpsc::channel();
            let classifier = classifier.clone();
            rayon::spawn(move || {
                let classified = classifier.classify(&buf);
                let _ = tx.send((buf, classified));
            });
            pending.push_back(rx);
            while pending.len() > CLASSIFY_AHEAD {
                apply_oldest(&mut pending, &mut writer, &mut failed);
            }
            continue;
        }
        while !pending.is_empty() {
            apply_oldest(&mut pending, &mut writer, &mut failed);
        }
        match job {
            Job::SetParent(parent) => writer.set_parent(parent),
            Job::Open(dst) => writer.open_pagemap(dst),
            Job::Entry {
                vaddr,
                nr_pages,
                flags,
            } => writer.add_entry(vaddr, nr_pages, flags),
            Job::Pages(_) => unreachable!("handled above"),
            Job::Commit(reply) => {
                let result = match failed.take() {
                    Some(e) => Err(e),
                    None => writer.commit(),
                };
                let _ = reply.send(result);
                return;
            }
        }
    }
    // The session ended without CLOSE: pending batches are dropped with it; the writer's
    // drop removes its segment.
}
