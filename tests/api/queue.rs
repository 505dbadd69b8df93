//! The leased job queue's contract (`store::queue`), run on both stores.
//! "Two processes" are two store handles on one database: each has its own
//! connections (and on SQLite its own writer), as two servers would.

use std::collections::BTreeSet;

use hookflow::domain::JobId;
use hookflow::store::queue::{Job, JobClaim, JobOutcome, JobStatus, NewJob};
use serde_json::json;

use crate::both_stores;
use crate::helpers::{Backend, delivery_jobs, open_store, test_db};

both_stores!(
    claims_are_exclusive_and_finished_jobs_are_never_claimed_again,
    an_expired_lease_is_taken_over_and_a_lost_lease_writes_nothing,
    a_retry_waits_for_its_time_and_a_failure_is_final,
    per_key_limits_hold_across_two_processes,
    one_keys_backlog_does_not_hide_another_key,
    two_job_workers_handle_each_job_once_and_keep_per_key_limits,
    delivered_attempts_recorded_together_write_only_under_a_held_lease,
    a_claim_behind_a_finish_takes_the_slot_it_freed_in_one_transaction,
    a_worker_starts_what_it_claims_behind_a_finish_until_it_drains,
);

const T0: i64 = 1_800_000_000_000;

fn job(key: &str, n: usize, due_at: i64) -> NewJob {
    NewJob {
        kind: "test".into(),
        key: key.into(),
        workspace_id: None,
        payload: json!({"n": n}),
        due_at,
    }
}

fn claim(owner: &str, now: i64, limit: usize, per_key: Option<u32>) -> JobClaim {
    JobClaim {
        kind: "test".into(),
        owner: owner.into(),
        now,
        lease_until: now + 10_000,
        limit,
        per_key,
    }
}

fn ids(jobs: &[Job]) -> BTreeSet<JobId> {
    jobs.iter().map(|j| j.id.clone()).collect()
}

async fn claims_are_exclusive_and_finished_jobs_are_never_claimed_again(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let (a, bb) = (open_store(&db).await, open_store(&db).await);
    let jobs: Vec<NewJob> = (0..40)
        .map(|n| job(&format!("k{}", n % 4), n, T0))
        .collect();
    let all: BTreeSet<JobId> = a.enqueue_jobs(jobs).await.unwrap().into_iter().collect();
    assert_eq!(all.len(), 40);
    // Both "processes" claim at once, repeatedly, until nothing is left.
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    loop {
        let (x, y) = tokio::join!(
            a.claim_jobs(claim("A", T0, 7, None)),
            bb.claim_jobs(claim("B", T0, 7, None))
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        if x.is_empty() && y.is_empty() {
            break;
        }
        got_a.extend(x);
        got_b.extend(y);
    }
    let (set_a, set_b) = (ids(&got_a), ids(&got_b));
    assert!(set_a.is_disjoint(&set_b), "a job was leased twice");
    assert_eq!(set_a.len() + set_b.len(), 40, "every job was claimed");
    assert_eq!(set_a.union(&set_b).cloned().collect::<BTreeSet<_>>(), all);
    assert!(
        got_a
            .iter()
            .chain(&got_b)
            .all(|j| j.attempt == 1 && j.kind == "test")
    );
    let payloads: BTreeSet<u64> = got_a
        .iter()
        .chain(&got_b)
        .map(|j| j.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(payloads, (0..40).collect(), "each job's payload, as stored");
    for j in &got_a {
        assert!(
            a.finish_job(&j.id, "A", T0 + 1, JobOutcome::Done)
                .await
                .unwrap()
        );
    }
    for j in &got_b {
        // The other handle records it: the database, not the process, decides.
        assert!(
            a.finish_job(&j.id, "B", T0 + 1, JobOutcome::Done)
                .await
                .unwrap()
        );
    }
    // Finished: never claimed again, even long after every lease.
    let later = T0 + 1_000_000;
    assert!(
        a.claim_jobs(claim("C", later, 100, None))
            .await
            .unwrap()
            .is_empty()
    );
    let rec = a.get_job(&got_b[0].id).await.unwrap();
    assert_eq!(
        (rec.status, rec.attempts, rec.lease_owner),
        (JobStatus::Done, 1, None)
    );
    assert_eq!(rec.finished_at, Some(T0 + 1));
    // A second finish of a finished job writes nothing.
    assert!(
        !a.finish_job(&got_a[0].id, "A", T0 + 2, JobOutcome::Done)
            .await
            .unwrap()
    );
    a.close().await;
    bb.close().await;
}

async fn an_expired_lease_is_taken_over_and_a_lost_lease_writes_nothing(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let (a, bb) = (open_store(&db).await, open_store(&db).await);
    let id = a
        .enqueue_jobs(vec![job("", 0, T0)])
        .await
        .unwrap()
        .remove(0);
    let first = a.claim_jobs(claim("A", T0, 10, None)).await.unwrap();
    assert_eq!(ids(&first), BTreeSet::from([id.clone()]));
    // Leased until T0 + 10 s: nobody else gets it before.
    assert!(
        bb.claim_jobs(claim("B", T0 + 9_999, 10, None))
            .await
            .unwrap()
            .is_empty()
    );
    // A died; its lease ends; B takes the job over, as a second attempt.
    let second = bb
        .claim_jobs(claim("B", T0 + 10_000, 10, None))
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!((second[0].attempt, second[0].lease_until), (2, T0 + 20_000));
    // A comes back: its outcome is refused and changes nothing.
    let late = JobOutcome::Failed {
        error: "late".into(),
    };
    assert!(!a.finish_job(&id, "A", T0 + 10_001, late).await.unwrap());
    assert_eq!(a.get_job(&id).await.unwrap().status, JobStatus::Queued);
    // B's lease, once over, is lost too.
    assert!(
        !bb.finish_job(&id, "B", T0 + 20_000, JobOutcome::Done)
            .await
            .unwrap()
    );
    let third = a
        .claim_jobs(claim("A", T0 + 20_000, 10, None))
        .await
        .unwrap();
    assert_eq!(third[0].attempt, 3);
    assert!(
        a.finish_job(&id, "A", T0 + 20_001, JobOutcome::Done)
            .await
            .unwrap()
    );
    let rec = a.get_job(&id).await.unwrap();
    assert_eq!(
        (rec.status, rec.attempts, rec.last_error),
        (JobStatus::Done, 3, None)
    );
    a.close().await;
    bb.close().await;
}

async fn a_retry_waits_for_its_time_and_a_failure_is_final(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let ids_ = s
        .enqueue_jobs(vec![job("", 0, T0), job("", 1, T0 + 60_000)])
        .await
        .unwrap();
    // Only the job that is due.
    let got = s.claim_jobs(claim("A", T0, 10, None)).await.unwrap();
    assert_eq!(ids(&got), BTreeSet::from([ids_[0].clone()]));
    let retry = JobOutcome::Retry {
        due_at: T0 + 30_000,
        error: "503 from the endpoint".into(),
    };
    assert!(s.finish_job(&ids_[0], "A", T0 + 5, retry).await.unwrap());
    let rec = s.get_job(&ids_[0]).await.unwrap();
    assert_eq!(
        (
            rec.status,
            rec.due_at,
            rec.last_error.as_deref(),
            rec.lease_owner
        ),
        (
            JobStatus::Queued,
            T0 + 30_000,
            Some("503 from the endpoint"),
            None
        )
    );
    assert!(
        s.claim_jobs(claim("A", T0 + 29_999, 10, None))
            .await
            .unwrap()
            .is_empty()
    );
    let again = s
        .claim_jobs(claim("A", T0 + 30_000, 10, None))
        .await
        .unwrap();
    assert_eq!((again.len(), again[0].attempt), (1, 2));
    let failed = JobOutcome::Failed {
        error: "gave up".into(),
    };
    assert!(
        s.finish_job(&ids_[0], "A", T0 + 30_001, failed)
            .await
            .unwrap()
    );
    let rec = s.get_job(&ids_[0]).await.unwrap();
    assert_eq!(
        (rec.status, rec.last_error.as_deref()),
        (JobStatus::Failed, Some("gave up"))
    );
    // Later, only the other job (now due) is claimed; the failed one never.
    let last = s
        .claim_jobs(claim("A", T0 + 600_000, 10, None))
        .await
        .unwrap();
    assert_eq!(ids(&last), BTreeSet::from([ids_[1].clone()]));
    s.close().await;
}

async fn per_key_limits_hold_across_two_processes(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let (a, bb) = (open_store(&db).await, open_store(&db).await);
    let mut jobs: Vec<NewJob> = (0..12).map(|n| job("slow.example", n, T0)).collect();
    jobs.extend((0..3).map(|n| job("fast.example", n, T0)));
    a.enqueue_jobs(jobs).await.unwrap();
    // Both claim at once with room for everything, two per key at most.
    let (x, y) = tokio::join!(
        a.claim_jobs(claim("A", T0, 100, Some(2))),
        bb.claim_jobs(claim("B", T0, 100, Some(2)))
    );
    let leased: Vec<Job> = x.unwrap().into_iter().chain(y.unwrap()).collect();
    let per = |key: &str| leased.iter().filter(|j| j.key == key).count();
    assert_eq!(
        (per("slow.example"), per("fast.example")),
        (2, 2),
        "{leased:?}"
    );
    // Nothing more while both slots of each key are held.
    assert!(
        bb.claim_jobs(claim("B", T0 + 1, 100, Some(2)))
            .await
            .unwrap()
            .is_empty()
    );
    // One slot frees: one more job of that key, and no more.
    let done = leased.iter().find(|j| j.key == "slow.example").unwrap();
    let owner = if a
        .finish_job(&done.id, "A", T0 + 2, JobOutcome::Done)
        .await
        .unwrap()
    {
        "A"
    } else {
        assert!(
            bb.finish_job(&done.id, "B", T0 + 2, JobOutcome::Done)
                .await
                .unwrap()
        );
        "B"
    };
    let next = a
        .claim_jobs(claim("A", T0 + 3, 100, Some(2)))
        .await
        .unwrap();
    assert_eq!(next.len(), 1, "after {owner} finished one: {next:?}");
    assert_eq!(next[0].key, "slow.example");
    // Expired leases free their slots too.
    let after = bb
        .claim_jobs(claim("B", T0 + 20_000, 100, Some(2)))
        .await
        .unwrap();
    let per = |key: &str| after.iter().filter(|j| j.key == key).count();
    assert_eq!(
        (per("slow.example"), per("fast.example")),
        (2, 2),
        "{after:?}"
    );
    a.close().await;
    bb.close().await;
}

async fn one_keys_backlog_does_not_hide_another_key(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    // 300 old jobs of one endpoint, then one of another.
    let mut jobs: Vec<NewJob> = (0..300).map(|n| job("down.example", n, T0)).collect();
    jobs.push(job("up.example", 0, T0 + 1));
    s.enqueue_jobs(jobs).await.unwrap();
    let got = s.claim_jobs(claim("A", T0 + 2, 5, Some(1))).await.unwrap();
    let keys: BTreeSet<&str> = got.iter().map(|j| j.key.as_str()).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["down.example", "up.example"]),
        "{got:?}"
    );
    s.close().await;
}

/// A handler that counts: every call, and the most calls in progress at
/// once per key (across both workers, which share it here).
#[derive(Default)]
struct Counting {
    calls: std::sync::Mutex<Vec<(u64, i64)>>,
    busy: std::sync::Mutex<std::collections::HashMap<String, (u32, u32)>>,
}

struct Handler(std::sync::Arc<Counting>);

#[async_trait::async_trait]
impl hookflow::worker::JobHandler for Handler {
    async fn handle(&self, job: &Job) -> Option<JobOutcome> {
        {
            let mut busy = self.0.busy.lock().unwrap();
            let e = busy.entry(job.key.clone()).or_default();
            e.0 += 1;
            e.1 = e.1.max(e.0);
        }
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        self.0.busy.lock().unwrap().get_mut(&job.key).unwrap().0 -= 1;
        let n = job.payload["n"].as_u64().unwrap();
        self.0.calls.lock().unwrap().push((n, job.attempt));
        // Even jobs fail their first attempt and are retried shortly.
        Some(if n.is_multiple_of(2) && job.attempt == 1 {
            JobOutcome::Retry {
                due_at: chrono::Utc::now().timestamp_millis() + 50,
                error: "first attempt".into(),
            }
        } else {
            JobOutcome::Done
        })
    }
}

/// A worker of kind `test` over [`Handler`]: batches of 8, one job per key
/// at once, 8 in flight.
fn test_worker(
    store: std::sync::Arc<dyn hookflow::store::Store>,
    owner: &str,
    counting: &std::sync::Arc<Counting>,
    wake: std::sync::Arc<tokio::sync::Notify>,
) -> hookflow::worker::JobWorker<Handler> {
    hookflow::worker::JobWorker::new(
        store,
        std::sync::Arc::new(hookflow::flows::SystemClock),
        std::sync::Arc::new(Handler(counting.clone())),
        hookflow::worker::JobWorkerConfig {
            kind: "test".into(),
            owner: owner.into(),
            lease: std::time::Duration::from_secs(30),
            batch: 8,
            per_key: Some(1),
            max_in_flight: 8,
        },
        wake,
    )
}

async fn two_job_workers_handle_each_job_once_and_keep_per_key_limits(b: Backend) {
    use hookflow::worker::Loops;
    use std::sync::Arc;
    let Some(db) = test_db(b).await else { return };
    let (a, bb) = (open_store(&db).await, open_store(&db).await);
    let now = chrono::Utc::now().timestamp_millis();
    let jobs: Vec<NewJob> = (0..24)
        .map(|n| job(&format!("endpoint-{}", n % 3), n, now))
        .collect();
    let ids_ = a.enqueue_jobs(jobs).await.unwrap();
    let counting = Arc::new(Counting::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut running = Vec::new();
    for (name, store) in [("A", a.clone()), ("B", bb.clone())] {
        let wake = Arc::new(tokio::sync::Notify::new());
        let worker = Arc::new(test_worker(
            store,
            &format!("worker-{name}"),
            &counting,
            wake.clone(),
        ));
        let loops = Loops {
            workers: 2,
            poll: std::time::Duration::from_millis(20),
        };
        running.push(tokio::spawn(hookflow::worker::run(
            worker,
            loops,
            wake,
            stop.clone(),
        )));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for id in &ids_ {
        loop {
            let rec = a.get_job(id).await.unwrap();
            if rec.status == JobStatus::Done {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job never done: {rec:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    stop.cancel();
    for r in running {
        r.await.unwrap();
    }
    let mut calls = counting.calls.lock().unwrap().clone();
    calls.sort_unstable();
    let expected: Vec<(u64, i64)> = (0..24u64)
        .flat_map(|n| {
            if n % 2 == 0 {
                vec![(n, 1), (n, 2)]
            } else {
                vec![(n, 1)]
            }
        })
        .collect();
    assert_eq!(
        calls, expected,
        "each job handled once per attempt, retried once if even"
    );
    let busy = counting.busy.lock().unwrap().clone();
    assert!(
        busy.values().all(|(_, most)| *most == 1),
        "per_key 1 held across both workers: {busy:?}"
    );
    a.close().await;
    bb.close().await;
}

/// The statements that store a `flow.step` delivery (and its job) per
/// `(id, webhook)`, at `T0`.
fn deliveries<'a>(
    ws: &hookflow::domain::WorkspaceId,
    items: impl IntoIterator<
        Item = (
            &'a hookflow::domain::DeliveryId,
            &'a hookflow::domain::WebhookId,
        ),
    >,
) -> Vec<hookflow::store::sql::Stmt> {
    use hookflow::store::outbound as out;
    items
        .into_iter()
        .flat_map(|(id, webhook_id)| {
            out::insert_delivery(
                &out::NewDelivery {
                    id: id.clone(),
                    workspace_id: ws.clone(),
                    webhook_id: webhook_id.clone(),
                    event_type: "flow.step".into(),
                    flow_id: None,
                    run_id: None,
                    contact_id: None,
                    step: None,
                    context: json!({}),
                },
                T0,
            )
        })
        .collect()
}

/// `record_delivered` (many delivered attempts, set-based) writes only for
/// the jobs whose lease the writer holds, as `record_attempt` does one by one;
/// then the retention purge removes the attempts in bounded batches.
async fn delivered_attempts_recorded_together_write_only_under_a_held_lease(b: Backend) {
    use hookflow::domain::{DeliveryId, WebhookId};
    use hookflow::store::outbound as out;
    let Some(db) = test_db(b).await else { return };
    let store = open_store(&db).await;
    let ws = store.create_workspace("records").await.unwrap();
    let hook = out::create_webhook(
        &*store,
        &ws.id,
        out::NewWebhook {
            name: "Hook",
            max_concurrency: 64,
            spec: &json!({"name": "Hook", "url": "https://example.com/h"}),
            verified: true,
            event_types: None,
            inline: false,
        },
        T0,
    )
    .await
    .unwrap();
    let ids: Vec<DeliveryId> = (0..11).map(|_| DeliveryId::generate()).collect();
    let script = deliveries(&ws.id, ids.iter().map(|id| (id, &hook.id)));
    store.run_sql(script).await.unwrap();
    // Loads read the webhooks by the jobs' keys; a webhook missing from
    // the keys (none given, or a wrong one) is read after, not dropped.
    for keys in [vec![hook.id.clone()], vec![], vec![WebhookId::generate()]] {
        let loaded = out::load_many(&*store, &ids[..3], &keys).await.unwrap();
        assert_eq!(loaded.len(), 3, "{keys:?}");
        assert!(
            loaded
                .values()
                .all(|(d, w)| w.id == hook.id && d.webhook_id == hook.id)
        );
    }
    // "a" leases 8 of them, "b" the other 3.
    let mut c = claim("a", T0, 8, None);
    c.kind = out::DELIVERY_JOB.into();
    assert_eq!(store.claim_jobs(c.clone()).await.unwrap().len(), 8);
    c.owner = "b".into();
    assert_eq!(store.claim_jobs(c).await.unwrap().len(), 3);
    let write = |id: &DeliveryId| out::AttemptWrite {
        delivery: id.clone(),
        workspace_id: ws.id.clone(),
        webhook: hook.id.clone(),
        attempt: Some(out::NewAttempt {
            started_at: T0,
            request: json!({"method": "POST"}).to_string(),
            response_status: Some(200),
            response_headers: Some("[]".into()),
            response_body: Some(b"ok".to_vec()),
            truncated: false,
            duration_ms: 3,
            error: None,
            outcome: "succeeded",
        }),
        status: out::DeliveryStatus::Succeeded,
        next_attempt_at: None,
        error: None,
        webhook_change: None,
        job: JobOutcome::Done,
        also: Vec::new(),
        resume: None,
    };
    let writes: Vec<out::AttemptWrite> = ids.iter().map(write).collect();
    assert!(writes.iter().all(out::plain_success));
    // "a" writes all 11 (chunks of 8, 2 and 1): the 3 it does not hold are
    // refused and nothing of theirs is written.
    let held = out::record_delivered(&*store, &writes, "a", T0 + 1)
        .await
        .unwrap();
    assert_eq!(held.len(), ids.len());
    let lost: Vec<DeliveryId> = ids
        .iter()
        .zip(&held)
        .filter(|(_, h)| !**h)
        .map(|(i, _)| i.clone())
        .collect();
    let held_by_a: Vec<DeliveryId> = ids.iter().filter(|i| !lost.contains(i)).cloned().collect();
    assert_eq!(lost.len(), 3, "{lost:?}");
    assert_eq!(held_by_a.len(), 8);
    for id in &ids {
        let (d, attempts) = out::get_delivery(&*store, &ws.id, id, T0 + 1)
            .await
            .unwrap();
        if lost.contains(id) {
            assert_eq!(d.status, out::DeliveryStatus::Delivering, "{id}");
            assert!(attempts.is_empty(), "{id}");
        } else {
            assert_eq!(d.status, out::DeliveryStatus::Succeeded, "{id}");
            assert_eq!(d.attempts, 1);
            assert_eq!(attempts.len(), 1, "{id}");
            assert_eq!(attempts[0].response_body.as_deref(), Some(&b"ok"[..]));
        }
    }
    // Finished jobs are gone; "b"'s are still leased to it.
    assert_eq!(delivery_jobs(&*store).await, 3);
    // "b" records its own 3.
    let mine: Vec<out::AttemptWrite> = lost.iter().map(write).collect();
    assert!(
        out::record_delivered(&*store, &mine, "b", T0 + 2)
            .await
            .unwrap()
            .iter()
            .all(|held| *held)
    );
    // Retention: attempts that started before the cut-off go, in batches
    // of the size asked for; their deliveries stay.
    assert_eq!(out::purge_attempts(&*store, T0, 4).await.unwrap(), 0);
    let mut batches = Vec::new();
    loop {
        let n = out::purge_attempts(&*store, T0 + 1, 4).await.unwrap();
        batches.push(n);
        if n < 4 {
            break;
        }
    }
    assert_eq!(batches, vec![4, 4, 3], "11 attempts in bounded batches");
    for id in &ids {
        let (d, attempts) = out::get_delivery(&*store, &ws.id, id, T0 + 3)
            .await
            .unwrap();
        assert_eq!(d.status, out::DeliveryStatus::Succeeded, "{id}");
        assert!(attempts.is_empty(), "{id}");
    }
    // A delivery deleted with its webhook while its attempt was in flight
    // neither fails the others recorded with it nor gets an attempt; and a
    // finished delivery recorded again (a worker whose lease was lost and
    // taken over) gets nothing more.
    let other = out::create_webhook(
        &*store,
        &ws.id,
        out::NewWebhook {
            name: "Other",
            max_concurrency: 64,
            spec: &json!({"name": "Other", "url": "https://example.com/o"}),
            verified: true,
            event_types: None,
            inline: false,
        },
        T0,
    )
    .await
    .unwrap();
    let (kept, gone) = (DeliveryId::generate(), DeliveryId::generate());
    let script = deliveries(&ws.id, [(&kept, &hook.id), (&gone, &other.id)]);
    store.run_sql(script).await.unwrap();
    let mut c = claim("c", T0 + 4, 8, None);
    c.kind = out::DELIVERY_JOB.into();
    assert_eq!(store.claim_jobs(c).await.unwrap().len(), 2);
    out::delete_webhook(&*store, &ws.id, &other.id)
        .await
        .unwrap();
    let held = out::record_delivered(&*store, &[write(&kept), write(&gone)], "c", T0 + 5)
        .await
        .unwrap();
    assert_eq!(held, vec![true, false]);
    let (d, attempts) = out::get_delivery(&*store, &ws.id, &kept, T0 + 5)
        .await
        .unwrap();
    assert_eq!(d.status, out::DeliveryStatus::Succeeded);
    assert_eq!(attempts.len(), 1);
    let again = out::record_delivered(&*store, &[write(&kept)], "c", T0 + 6)
        .await
        .unwrap();
    assert_eq!(again, vec![false]);
    let (_, attempts) = out::get_delivery(&*store, &ws.id, &kept, T0 + 6)
        .await
        .unwrap();
    assert_eq!(attempts.len(), 1, "no second outcome");
}

/// `run_sql_then_claim`: on SQLite the claim sees what the script freed
/// (one commit for both); PostgreSQL only runs the script. Either way a
/// script that fails writes nothing and nothing is claimed behind it.
async fn a_claim_behind_a_finish_takes_the_slot_it_freed_in_one_transaction(b: Backend) {
    use hookflow::store::queue::finish_stmt;
    use hookflow::store::sql::Stmt;
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let all = s
        .enqueue_jobs((0..3).map(|n| job("k", n, T0 + n as i64)).collect())
        .await
        .unwrap();
    let first = s
        .claim_jobs(claim("A", T0 + 10, 10, Some(1)))
        .await
        .unwrap();
    assert_eq!(ids(&first), BTreeSet::from([all[0].clone()]));
    // The key's one slot is held: a claim alone takes nothing ...
    assert!(
        s.claim_jobs(claim("A", T0 + 11, 10, Some(1)))
            .await
            .unwrap()
            .is_empty()
    );
    // ... and behind the finish that frees it, takes the next job.
    let (done, next) = s
        .run_sql_then_claim(
            vec![finish_stmt(&all[0], "A", T0 + 12, &JobOutcome::Done)],
            claim("A", T0 + 12, 10, Some(1)),
        )
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].changed, 1, "the finish recorded the first job");
    match b {
        Backend::Sqlite => assert_eq!(ids(&next), BTreeSet::from([all[1].clone()])),
        Backend::Postgres => {
            assert!(next.is_empty(), "PostgreSQL claims nothing behind");
            let taken = s
                .claim_jobs(claim("A", T0 + 12, 10, Some(1)))
                .await
                .unwrap();
            assert_eq!(ids(&taken), BTreeSet::from([all[1].clone()]));
        }
    }
    // A script that fails rolls back its own writes and claims nothing,
    // though the claim behind it would have room for the third job.
    let failing = Stmt::new("SELECT 1 WHERE 1 = 0", vec![]).or_not_found("job", "missing");
    let err = s
        .run_sql_then_claim(
            vec![
                finish_stmt(&all[1], "A", T0 + 13, &JobOutcome::Done),
                failing,
            ],
            claim("A", T0 + 13, 10, Some(2)),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    let second = s.get_job(&all[1]).await.unwrap();
    assert_eq!(
        (second.status, second.lease_owner.as_deref()),
        (JobStatus::Queued, Some("A")),
        "the finish was rolled back"
    );
    let third = s.get_job(&all[2]).await.unwrap();
    assert_eq!(third.lease_owner, None, "nothing was claimed");
    s.close().await;
}

/// `JobWorker::finish_then_claim`: the job a finish frees a slot for starts
/// at once on SQLite (the claim rides on the finish), as the loops would
/// start it; on PostgreSQL it waits for a loop. A drained worker claims
/// nothing behind a finish.
async fn a_worker_starts_what_it_claims_behind_a_finish_until_it_drains(b: Backend) {
    use hookflow::store::queue::finish_stmt;
    use hookflow::worker::{FinishThenClaim, LeasedWork};
    use std::sync::Arc;
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let now = chrono::Utc::now().timestamp_millis();
    let counting = Arc::new(Counting::default());
    let worker = test_worker(
        s.clone(),
        "worker",
        &counting,
        Arc::new(tokio::sync::Notify::new()),
    );
    // Odd payloads: done on their first attempt.
    let jobs = s
        .enqueue_jobs(vec![job("k", 1, now), job("k", 3, now)])
        .await
        .unwrap();
    let mut lease = claim("worker", now, 1, Some(1));
    lease.lease_until = now + 30_000;
    assert_eq!(
        ids(&s.claim_jobs(lease).await.unwrap()),
        BTreeSet::from([jobs[0].clone()])
    );
    let done = worker
        .finish_then_claim(vec![finish_stmt(
            &jobs[0],
            "worker",
            now + 2,
            &JobOutcome::Done,
        )])
        .await
        .unwrap();
    assert_eq!(done[0].changed, 1, "the finish was recorded");
    tokio::time::timeout(std::time::Duration::from_secs(10), worker.drain())
        .await
        .expect("the jobs started behind the finish end");
    let second = s.get_job(&jobs[1]).await.unwrap();
    match b {
        Backend::Sqlite => {
            assert_eq!(second.status, JobStatus::Done, "claimed behind and handled");
            assert_eq!(*counting.calls.lock().unwrap(), vec![(3, 1)]);
        }
        Backend::Postgres => {
            assert_eq!(
                (second.status, second.lease_owner),
                (JobStatus::Queued, None)
            );
            assert!(counting.calls.lock().unwrap().is_empty());
        }
    }
    // Drained: a finish claims nothing behind it, whatever the store.
    let later = s.enqueue_jobs(vec![job("other", 5, now)]).await.unwrap();
    worker.finish_then_claim(Vec::new()).await.unwrap();
    let rec = s.get_job(&later[0]).await.unwrap();
    assert_eq!(
        (rec.status, rec.lease_owner),
        (JobStatus::Queued, None),
        "a drained worker claims nothing behind a finish"
    );
    s.close().await;
}
