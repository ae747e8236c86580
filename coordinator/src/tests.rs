//! The leader actor driven through its command channel, on the in-memory store: hand-offs
//! wait for the old owner's release, Kafka partitions found later get tasks, and a
//! deposed leader stops without writing.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use smelter_common::config::CoordinatorConfig;
use smelter_common::store::{CoordinationStore, Expect, MemoryStore, keys};
use smelter_proto::{AssignmentUpdate, ClusterStatus, TaskState, TaskStatusReport, WorkerContext};
use tokio::sync::{mpsc, oneshot};

use crate::actor::AssignmentWatch;
use tokio_util::sync::CancellationToken;

use crate::actor::{Actor, Command};
use crate::election::{self, LeaderRecord};

const DEMO: &str = include_str!("../../examples/clickstream.yaml");

fn kafka_demo() -> String {
    let start = DEMO.find("  events:\n    generator:").unwrap();
    let end = DEMO.find("\ntables:").unwrap();
    format!(
        "{}  events:\n    kafka:\n      brokers: \"127.0.0.1:1\"\n      topic: clicks\n{}",
        &DEMO[..start],
        &DEMO[end..]
    )
}

struct Leader {
    store: Arc<dyn CoordinationStore>,
    commands: mpsc::Sender<Command>,
    stopped: CancellationToken,
    actor: tokio::task::JoinHandle<()>,
}

async fn lead(config: CoordinatorConfig) -> Leader {
    let store: Arc<dyn CoordinationStore> = Arc::new(MemoryStore::new());
    let me = LeaderRecord {
        id: "test-leader".into(),
        endpoint: "http://127.0.0.1:1".into(),
    };
    let shutdown = CancellationToken::new();
    let leadership = election::campaign(&store, &me, Duration::from_secs(30), &shutdown, |_| {})
        .await
        .unwrap();
    let actor = Actor::take_over(store.clone(), config, me, leadership.guard)
        .await
        .unwrap();
    let (commands, receiver) = mpsc::channel(16);
    let stopped = CancellationToken::new();
    let actor = tokio::spawn(actor.run(receiver, stopped.clone()));
    Leader {
        store,
        commands,
        stopped,
        actor,
    }
}

impl Leader {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> T {
        let (reply, answer) = oneshot::channel();
        self.commands.send(make(reply)).await.unwrap();
        answer.await.unwrap()
    }

    async fn status(&self) -> ClusterStatus {
        self.call(|reply| Command::Status { reply }).await
    }

    async fn apply(&self, spec_yaml: &str) -> crate::Result<smelter_proto::ApplyPipelineResponse> {
        self.call(|reply| Command::Apply {
            spec_yaml: spec_yaml.to_string(),
            origin: "p.yaml".into(),
            reply,
        })
        .await
    }

    /// Registers a worker and opens its assignment stream.
    async fn join(&self, name: &str) -> (String, AssignmentWatch) {
        let registered = self
            .call(|reply| Command::Register {
                flight_endpoint: format!("{name}:1"),
                hostname: name.into(),
                resume_id: String::new(),
                running_task_ids: Vec::new(),
                reply,
            })
            .await
            .unwrap();
        let updates = self
            .call(|reply| Command::Watch {
                worker_id: registered.worker_id.clone(),
                reply,
            })
            .await
            .unwrap();
        (registered.worker_id, updates)
    }
}

/// The latest assignment published to a worker.
fn latest(updates: &mut AssignmentWatch) -> AssignmentUpdate {
    updates.borrow_and_update().clone()
}

fn ids(update: &AssignmentUpdate) -> Vec<String> {
    update.tasks.iter().map(|t| t.task_id.clone()).collect()
}

#[tokio::test]
async fn a_moved_task_starts_on_its_new_owner_only_after_the_old_one_released_it() {
    let leader = lead(CoordinatorConfig {
        handoff_timeout_ms: 60_000,
        ..Default::default()
    })
    .await;
    let (a, mut a_updates) = leader.join("a").await;
    leader.apply(DEMO).await.unwrap();
    let all = ids(&latest(&mut a_updates));
    assert_eq!(
        all.len(),
        9,
        "4 partitions, 1 refine, 3 aggregates, 1 maintenance: {all:?}"
    );

    let (b, mut b_updates) = leader.join("b").await;
    let a_now = ids(&latest(&mut a_updates));
    let moving: Vec<String> = all.iter().filter(|t| !a_now.contains(t)).cloned().collect();
    assert_eq!(
        moving.len(),
        3,
        "2 partitions and 1 gold table leave a: {a_now:?}"
    );
    assert!(
        ids(&latest(&mut b_updates)).is_empty(),
        "b gets nothing before a has released it"
    );
    let status = leader.status().await;
    for task in status
        .tasks
        .iter()
        .filter(|t| moving.contains(&t.task.as_ref().unwrap().task_id))
    {
        assert_eq!(
            (t_owner(task), task.releasing_from.as_str()),
            (b.as_str(), a.as_str())
        );
    }

    // a drains and acknowledges one task at a time; each then starts on b.
    for (i, task_id) in moving.iter().enumerate() {
        let report = TaskStatusReport {
            context: Some(WorkerContext {
                worker_id: a.clone(),
                generation: status.generation,
            }),
            task_id: task_id.clone(),
            state: TaskState::Released as i32,
            ..Default::default()
        };
        leader
            .call(|reply| Command::Report { report, reply })
            .await
            .unwrap();
        let b_now = ids(&latest(&mut b_updates));
        assert_eq!(b_now.len(), i + 1, "{b_now:?}");
        assert!(b_now.contains(task_id));
    }
    leader.stopped.cancel();
    leader.actor.await.unwrap();
}

fn t_owner(task: &smelter_proto::TaskStatus) -> &str {
    task.worker_id.as_str()
}

#[tokio::test]
async fn a_dead_owner_hands_off_at_once() {
    let leader = lead(CoordinatorConfig {
        handoff_timeout_ms: 60_000,
        ..Default::default()
    })
    .await;
    let (a, _a_updates) = leader.join("a").await;
    leader.apply(DEMO).await.unwrap();
    let (_, mut b_updates) = leader.join("b").await;
    assert!(ids(&latest(&mut b_updates)).is_empty());
    // a leaves without draining (as after SIGKILL, its lease is gone): b gets everything now.
    leader
        .call(|reply| Command::Deregister {
            worker_id: a,
            reply,
        })
        .await
        .unwrap();
    assert_eq!(ids(&latest(&mut b_updates)).len(), 9);
}

#[tokio::test]
async fn kafka_partitions_found_later_get_ingest_tasks() {
    let leader = lead(CoordinatorConfig::default()).await;
    let (_, mut updates) = leader.join("a").await;
    leader.apply(&kafka_demo()).await.unwrap();
    let ingest = |update: &AssignmentUpdate| {
        update
            .tasks
            .iter()
            .filter(|t| t.kind() == smelter_proto::TaskKind::Ingest)
            .map(|t| t.partition)
            .collect::<Vec<_>>()
    };
    assert!(
        ingest(&latest(&mut updates)).is_empty(),
        "no partitions known yet"
    );
    for (found, expected) in [
        (2, vec![0, 1]),
        (4, vec![0, 1, 2, 3]),
        (3, vec![0, 1, 2, 3]),
    ] {
        leader
            .commands
            .send(Command::Partitions {
                pipeline: "clickstream".into(),
                source: "events".into(),
                count: found,
            })
            .await
            .unwrap();
        let status = leader.status().await; // the actor handled the discovery before this
        let tasks: Vec<i32> = status
            .tasks
            .iter()
            .filter_map(|t| t.task.as_ref())
            .filter(|t| t.kind() == smelter_proto::TaskKind::Ingest)
            .map(|t| t.partition)
            .collect();
        assert_eq!(tasks, expected, "after discovering {found}");
    }
    assert_eq!(ingest(&latest(&mut updates)), vec![0, 1, 2, 3]);
    let stored = leader
        .store
        .get(&keys::partitions("clickstream", "events"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.value,
        b"4".to_vec(),
        "a new leader starts from the count found"
    );
}

#[tokio::test]
async fn a_deposed_leader_stops_and_writes_nothing() {
    let leader = lead(CoordinatorConfig::default()).await;
    leader.status().await; // the actor has started (and written its generation)
    // Another replica takes the leader key (as after this one's lease expired).
    leader.store.delete(&keys::leader()).await.unwrap();
    leader
        .store
        .put_if(&keys::leader(), Expect::Absent, b"{}".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    let refused = leader.apply(DEMO).await.unwrap_err();
    assert!(
        matches!(refused, crate::CoordinatorError::NotLeader { .. }),
        "{refused}"
    );
    assert!(
        leader
            .store
            .get(&keys::pipeline("clickstream"))
            .await
            .unwrap()
            .is_none(),
        "the deposed leader stored nothing"
    );
    tokio::time::timeout(Duration::from_secs(5), leader.actor)
        .await
        .expect("the actor stops once deposed")
        .unwrap();
    assert!(leader.stopped.is_cancelled(), "and tells its owner");
}

/// A worker that opens its assignment stream and never reads it holds up nobody: while
/// dozens of large assignments are published, the leader goes on serving, and another
/// worker that stops heartbeating still loses its lease on time. Before, the actor awaited
/// a bounded send into each stream; once the unread stream's window and buffer filled,
/// the actor stopped — applies hung and no lease expired.
#[tokio::test]
async fn a_worker_that_never_reads_its_stream_delays_no_one() {
    use smelter_proto::{
        ApplyPipelineRequest, ClusterStatusRequest, ControlClient, HeartbeatRequest,
        RegisterWorkerRequest, WatchAssignmentsRequest,
    };
    use tokio::time::Instant;

    let store: Arc<dyn CoordinationStore> = Arc::new(MemoryStore::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let config = CoordinatorConfig {
        lease_ttl_ms: 2_000,
        heartbeat_interval_ms: 300,
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(crate::run(
        config,
        Default::default(),
        store,
        listener,
        None,
        shutdown.clone(),
    ));
    // Each client its own connection: the stuck stream's flow control is its own.
    let connect = || ControlClient::connect(endpoint.clone());
    let mut admin = connect().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin
        .get_cluster_status(ClusterStatusRequest {})
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let register = |name: &str| RegisterWorkerRequest {
        flight_endpoint: format!("{name}:1"),
        hostname: name.into(),
        ..Default::default()
    };
    let mut stuck = connect().await.unwrap();
    let stuck_id = stuck
        .register_worker(register("stuck"))
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    let _never_read = stuck
        .watch_assignments(WatchAssignmentsRequest {
            worker_id: stuck_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // The stuck worker stays alive: only its stream is stuck.
    let heartbeats = tokio::spawn(async move {
        loop {
            let request = HeartbeatRequest {
                worker_id: stuck_id.clone(),
                ..Default::default()
            };
            if stuck.heartbeat(request).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut quitter = connect().await.unwrap();
    let quitter_id = quitter
        .register_worker(register("quitter"))
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    // Every apply publishes the whole spec to each worker: 40 x 200 KB is far past what
    // the unread stream's HTTP/2 window and any buffer hold.
    let big = DEMO.replace(
        "description: Raw clickstream records with their source position, exactly once.",
        &format!("description: \"{}\"", "x".repeat(200_000)),
    );
    assert_ne!(big, DEMO);
    let applied = tokio::time::timeout(Duration::from_secs(60), async {
        for _ in 0..40 {
            admin
                .apply_pipeline(ApplyPipelineRequest {
                    spec_yaml: big.clone(),
                    origin: "big.yaml".into(),
                })
                .await
                .unwrap();
        }
    })
    .await;
    assert!(applied.is_ok(), "the leader stopped serving applies");
    // The quitter never heartbeated: its 2 s lease ends, and the leader must notice.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = admin
            .get_cluster_status(ClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<&str> = status
            .workers
            .iter()
            .map(|w| w.worker_id.as_str())
            .collect();
        if !ids.contains(&quitter_id.as_str()) {
            assert_eq!(ids.len(), 1, "the stuck worker is still a member: {ids:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the quitter's lease never expired: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    heartbeats.abort();
    // Shutting down does not wait on the unread stream beyond a lease TTL either.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the coordinator stops despite the unread stream")
        .unwrap()
        .unwrap();
}
