//! The simulated shipper keeps the protocol's promises against a collector that misbehaves
//! on purpose: it forgets the session's definitions once, applies a batch and loses the
//! answer (UNAVAILABLE: the shipper must say Hello again and find the batch applied), and
//! applies one and answers with a transport error (the retry must be a DUPLICATE). Every
//! sequence number must be applied once, in order, and the applied deltas must add up to
//! the node's own totals.

use kappie_loadtest::cluster::node::{Metric, Node};
use kappie_loadtest::cluster::record::Recorder;
use kappie_loadtest::cluster::shipper::{generate, Sender, DEFINE_SERIES_METADATA};
use kappie_proto::ingest_client::IngestClient;
use kappie_proto::ingest_server::{Ingest, IngestServer};
use kappie_proto::{HelloRequest, HelloResponse, PushRequest, PushResponse, PushStatus};
use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct FakeState {
    last: u64,
    /// Sessions whose definitions the fake holds.
    defined: HashSet<u64>,
    pushes: u32,
    hellos: u32,
    applied: Vec<PushRequest>,
}

struct Fake(Arc<Mutex<FakeState>>);

#[tonic::async_trait]
impl Ingest for Fake {
    async fn hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        let mut st = self.0.lock().unwrap();
        st.hellos += 1;
        Ok(Response::new(HelloResponse {
            last_applied_sequence: st.last,
        }))
    }

    async fn push(&self, req: Request<PushRequest>) -> Result<Response<PushResponse>, Status> {
        let mut st = self.0.lock().unwrap();
        st.pushes += 1;
        let n = st.pushes;
        let r = req.into_inner();
        if r.sequence <= st.last {
            return Ok(Response::new(PushResponse {
                status: PushStatus::Duplicate as i32,
                last_applied_sequence: st.last,
            }));
        }
        if !r.definitions.is_empty() {
            st.defined.insert(r.session);
        }
        if n == 2 {
            // As after a lost store: the session's definitions are gone.
            st.defined.clear();
        }
        if !st.defined.contains(&r.session) {
            let mut s = Status::failed_precondition("define the series again");
            s.metadata_mut()
                .insert(DEFINE_SERIES_METADATA, "1".parse().unwrap());
            return Err(s);
        }
        st.last = r.sequence;
        st.applied.push(r);
        match n {
            5 => Err(Status::unavailable(
                "applied, answer lost with the connection",
            )),
            8 => Err(Status::unknown("applied, answer lost in transport")),
            _ => Ok(Response::new(PushResponse {
                status: PushStatus::Applied as i32,
                last_applied_sequence: st.last,
            })),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_is_applied_once_through_lost_definitions_and_lost_answers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Mutex::new(FakeState::default()));
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IngestServer::new(Fake(state.clone())))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();

    let node = Node::new(3, 0, "test");
    let rec = Arc::new(Recorder::new(std::time::Instant::now()));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sender = tokio::spawn(
        Sender {
            index: 0,
            client: IngestClient::new(channel),
            layout: node.layout(),
            session: 7,
            rx,
            rec: rec.clone(),
            max_queued: 64,
            max_backoff: Duration::from_millis(500),
        }
        .run(),
    );
    let generator = tokio::spawn(generate(
        node,
        tokio::time::Instant::now(),
        Duration::from_millis(50),
        tx,
        stop_rx,
        rec.clone(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while state.lock().unwrap().applied.len() < 12 {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than 12 batches applied in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    let node = generator.await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), sender)
        .await
        .expect("the sender drains its queue")
        .unwrap();
    let _ = stop_server.send(());
    server.await.unwrap().unwrap();

    let st = state.lock().unwrap();
    let seqs: Vec<u64> = st.applied.iter().map(|r| r.sequence).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "applied once each, in order"
    );
    let mut totals = vec![0.0; node.series()];
    for r in &st.applied {
        for d in &r.deltas {
            totals[d.r#ref as usize - 1] += d.delta;
        }
        for g in &r.gauges {
            totals[g.r#ref as usize - 1] = g.value;
        }
    }
    for (i, (m, v)) in node.values().enumerate() {
        assert_eq!(totals[i], v, "series {i} ({m:?})");
    }
    assert!(node
        .values()
        .any(|(m, v)| m == Metric::ForwardBytes && v > 0.0));
    assert_eq!(
        st.hellos, 2,
        "a Hello per session and one after UNAVAILABLE"
    );
    assert_eq!(rec.queued.load(Relaxed), 0);
    let ev = rec.events.lock().unwrap();
    assert_eq!(ev.redefinitions, 1);
    assert_eq!(
        ev.acks.iter().filter(|a| a.latency_us.is_none()).count(),
        1,
        "the batch whose answer was lost is found applied by the Hello"
    );
    assert_eq!(
        ev.acks
            .iter()
            .filter(|a| a.duplicate && a.latency_us.is_some())
            .count(),
        1,
        "the retry of the batch applied behind a transport error is a DUPLICATE"
    );
    assert_eq!(ev.acks.len(), st.applied.len());
}
