//! Several `train` processes as the nodes of one run over loopback (node 0 listens, the
//! others connect to it): the same weights as one node with the
//! same number of workers and as one worker, the same logged values on every node, a node
//! that dies or never comes stops the others with an error within the timeout, the last
//! checkpoint resumes, and nodes started unlike are refused. Every process is killed at a
//! deadline, so no test can hang.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The embedded default job cut short: full fine-tuning (no dropout: the one-node runs with two
/// workers on the one CPU share its RNG), 2 micro-batches of 8 pairs a step.
const JOB: &[&str] = &[
    "--sft-steps",
    "0",
    "--micro-batch",
    "8",
    "--accumulation",
    "2",
];

/// How long any process of these tests may take.
const DEADLINE: Duration = Duration::from_secs(240);

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_train"))
        .args(JOB)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("train starts")
}

/// Waits for `child` until the deadline (then kills it): whether it succeeded, its stderr and
/// how long it took.
fn finish(mut child: Child, started: Instant) -> (bool, String, Duration) {
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let ok = status.is_some_and(|s| s.success());
    assert!(status.is_some(), "a process ran past the deadline:\n{err}");
    (ok, err, took)
}

/// `train` on one node with `args` (and `--out out`), to the end.
fn one_node(out: &Path, args: &[&str]) -> (bool, String) {
    let mut all = vec!["--out".to_string(), out.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let (ok, err, _) = finish(start(&all), Instant::now());
    (ok, err)
}

/// The flags of node `rank` of `nodes` sharing `out`, node 0 listening on `port`.
fn node_args(out: &Path, rank: usize, nodes: usize, port: u16, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--out".to_string(),
        out.display().to_string(),
        "--nodes".into(),
        nodes.to_string(),
        "--rank".into(),
        rank.to_string(),
        "--main-address".into(),
        format!("127.0.0.1:{port}"),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// `nodes` nodes sharing `out`, each given `extra(rank)`, run to the end: per node whether it
/// succeeded, its stderr and how long it took.
fn nodes_run(
    out: &Path,
    nodes: usize,
    extra: impl Fn(usize) -> Vec<&'static str>,
) -> Vec<(bool, String, Duration)> {
    let port = free_port();
    let started = Instant::now();
    let children: Vec<Child> = (0..nodes)
        .map(|r| start(&node_args(out, r, nodes, port, &extra(r))))
        .collect();
    children.into_iter().map(|c| finish(c, started)).collect()
}

fn weights(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("model").join("model.safetensors")).unwrap()
}

/// (step, loss, grad_norm, pairs) of every train line of a log.
fn train_lines(log: &Path) -> Vec<(u64, f64, f64, u64)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "train")
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap(),
                v["grad_norm"].as_f64().unwrap(),
                v["pairs"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn two_nodes_train_the_weights_of_one_node_with_two_workers_and_of_one_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, devices, one) = (
        dir.path().join("nodes"),
        dir.path().join("devices"),
        dir.path().join("one"),
    );
    let steps = ["--max-steps", "4", "--save-every", "2"];
    for (rank, (ok, err, _)) in nodes_run(&nodes, 2, |_| steps.to_vec()).iter().enumerate() {
        assert!(ok, "node {rank}: {err}");
    }
    let mut with_devices = steps.to_vec();
    with_devices.extend(["--devices", "cpu,cpu"]);
    let (ok, err) = one_node(&devices, &with_devices);
    assert!(ok, "{err}");
    let (ok, err) = one_node(&one, &steps);
    assert!(ok, "{err}");

    // Two workers, one micro-batch each: the same sums in the same order (a + b on both).
    assert_eq!(
        weights(&nodes),
        weights(&devices),
        "2 nodes vs 1 node x 2 workers"
    );
    assert_eq!(
        weights(&nodes),
        weights(&one),
        "2 nodes vs 1 node x 1 worker"
    );
    // Only node 0 wrote the run's files; every node logged every step with the same values.
    let decpo = nodes.join("decpo");
    assert!(decpo.join("checkpoint").join("model-2.mpk").exists());
    let (node0, node1) = (
        train_lines(&decpo.join("log.jsonl")),
        train_lines(&decpo.join("log-node-1.jsonl")),
    );
    assert_eq!(node0.len(), 4);
    assert_eq!(node0, node1, "the nodes logged different values");
    for ((a, b), c) in node0
        .iter()
        .zip(train_lines(&devices.join("decpo").join("log.jsonl")))
        .zip(train_lines(&one.join("decpo").join("log.jsonl")))
    {
        assert_eq!(a.3, 16, "step {}: every pair of the step counted", a.0);
        for other in [b, c] {
            assert_eq!((a.0, a.3), (other.0, other.3));
            // The values travel between nodes in f32.
            for (x, y) in [(a.1, other.1), (a.2, other.2)] {
                assert!(
                    (x - y).abs() <= 1e-6 * x.abs().max(1.0),
                    "step {}: {x} vs {y}",
                    a.0
                );
            }
        }
    }
}

#[test]
fn a_node_that_dies_stops_the_other_within_the_timeout_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, one) = (dir.path().join("nodes"), dir.path().join("one"));
    let run = [
        "--max-steps",
        "60",
        "--save-every",
        "2",
        "--node-timeout",
        "8",
    ];
    let port = free_port();
    let started = Instant::now();
    let node0 = start(&node_args(&nodes, 0, 2, port, &run));
    let mut node1 = start(&node_args(&nodes, 1, 2, port, &run));
    // Kill node 1 once node 0 has written its first checkpoint.
    let first = nodes.join("decpo").join("checkpoint").join("model-1.mpk");
    while !first.exists() && started.elapsed() < DEADLINE {
        std::thread::sleep(Duration::from_millis(20));
    }
    node1.kill().unwrap();
    node1.wait().unwrap();
    let killed = started.elapsed();
    let (ok, err, took) = finish(node0, started);
    assert!(!ok, "node 0 finished without node 1");
    assert!(err.contains("node 0 of 2"), "{err}");
    // The timeout, plus the step under way and the process's exit.
    assert!(
        took - killed < Duration::from_secs(8 + 20),
        "node 0 stopped {:?} after node 1 died",
        took - killed
    );
    let log = train_lines(&nodes.join("decpo").join("log.jsonl"));
    assert!(log.len() < 60, "the run went on to the end");

    // Both nodes again with --resume: the run ends as one node's uninterrupted run.
    let results = nodes_run(&nodes, 2, |_| {
        let mut args = run.to_vec();
        args.push("--resume");
        args
    });
    for (rank, (ok, err, _)) in results.iter().enumerate() {
        assert!(ok, "node {rank} after --resume: {err}");
    }
    let (ok, err) = one_node(&one, &run[..4]);
    assert!(ok, "{err}");
    assert_eq!(weights(&nodes), weights(&one), "resumed nodes vs one node");
}

#[test]
fn a_node_alone_stops_with_an_error_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let args = node_args(
        dir.path(),
        0,
        2,
        free_port(),
        &["--max-steps", "2", "--node-timeout", "3"],
    );
    let (ok, err, took) = finish(start(&args), Instant::now());
    assert!(!ok);
    assert!(
        err.contains("no answer from the other nodes within 3 s"),
        "{err}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn nodes_started_with_different_settings_are_refused_naming_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let results = nodes_run(dir.path(), 2, |rank| {
        let lr = if rank == 0 { "1e-3" } else { "2e-3" };
        vec![
            "--max-steps",
            "2",
            "--node-timeout",
            "60",
            "--learning-rate",
            lr,
        ]
    });
    for (rank, (ok, err, _)) in results.iter().enumerate() {
        assert!(!ok, "node {rank} trained");
        assert!(
            err.contains("settings ([objective], [train], [lora]) differs"),
            "node {rank}: {err}"
        );
    }
    assert!(
        !dir.path().join("decpo").join("log.jsonl").exists() || {
            train_lines(&dir.path().join("decpo").join("log.jsonl")).is_empty()
        }
    );
}

#[test]
fn nodes_started_with_different_numbers_of_nodes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let started = Instant::now();
    let extra = ["--max-steps", "2", "--node-timeout", "120"];
    let children = [
        start(&node_args(dir.path(), 0, 2, port, &extra)),
        start(&node_args(dir.path(), 1, 3, port, &extra)),
    ];
    let results: Vec<_> = children.into_iter().map(|c| finish(c, started)).collect();
    assert!(results.iter().all(|(ok, _, _)| !ok), "a node trained");
    // Node 0 refuses node 1 and says why; both stop at once, not at the timeout.
    for (rank, (_, err, took)) in results.iter().enumerate() {
        assert!(
            err.contains("its distributed.nodes differs"),
            "node {rank}: {err}"
        );
        assert!(*took < Duration::from_secs(60), "node {rank} took {took:?}");
    }
}
