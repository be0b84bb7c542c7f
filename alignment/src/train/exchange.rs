//! The nodes' exchange over TCP: node 0 listens on the run's main address, every other node
//! connects to it once for the whole run; a sum is each node sending its vector to node 0,
//! node 0 adding them in rank order (its own first, so N nodes add exactly as one node with N
//! workers) and sending the sum back. Every read and write waits at most the run's timeout,
//! and a node that stops closes its connections, so the others stop at once with an error
//! instead of waiting.
//!
//! Per sum of n values, a node other than 0 sends and receives 4n + 8 bytes; node 0 receives
//! and sends (nodes - 1) times that. (A ring would spread node 0's share over all nodes; with
//! a handful of nodes and the adapters' gradients this hub is not the bottleneck, and it keeps
//! the rank order of the sum.)

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// What a node sends first: this protocol's name and version, then its `nodes` and `rank`.
const HELLO: &[u8; 8] = b"decpo-n1";

/// How long node 0 waits for the first bytes of a connection before it drops it as not a node.
const HELLO_WAIT: Duration = Duration::from_secs(5);

/// This node's connections: node 0 holds one per other node, in rank order; the others hold
/// node 0's.
pub enum Exchange {
    Main { peers: Vec<TcpStream> },
    Peer { main: TcpStream },
}

/// Resolves `HOST:PORT`.
fn resolve(address: &str) -> Result<SocketAddr, String> {
    address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {address:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address:?} resolves to no address"))
}

/// The words for an I/O error of the connection with node `rank`, waiting at most `timeout`.
fn io_words(e: &std::io::Error, rank: usize, timeout: Duration) -> String {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
            "no answer from node {rank} within {} s (distributed.node_timeout)",
            timeout.as_secs_f64()
        ),
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe => {
            format!("node {rank} closed the connection (it stopped: see its messages)")
        }
        _ => format!("the connection with node {rank} failed: {e}"),
    }
}

fn set_up(stream: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))
}

fn write_u32(w: &mut impl Write, x: u32) -> std::io::Result<()> {
    w.write_all(&x.to_le_bytes())
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Node 0's answer to a hello: accepted (empty) or the reason it was refused.
fn answer(stream: &mut TcpStream, refusal: &str) -> std::io::Result<()> {
    write_u32(stream, refusal.len() as u32)?;
    stream.write_all(refusal.as_bytes())?;
    stream.flush()
}

/// Sends `values` (their count, then each as f32 little-endian).
fn send(stream: &mut TcpStream, values: &[f32]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(8 + 4 * values.len());
    bytes.extend((values.len() as u64).to_le_bytes());
    for v in values {
        bytes.extend(v.to_le_bytes());
    }
    stream.write_all(&bytes)?;
    stream.flush()
}

/// Receives a vector [`send`] sent: its values, or the count it announced when that is not
/// `expected`.
fn receive(stream: &mut TcpStream, expected: usize) -> std::io::Result<Result<Vec<f32>, u64>> {
    let mut count = [0; 8];
    stream.read_exact(&mut count)?;
    let count = u64::from_le_bytes(count);
    if count != expected as u64 {
        return Ok(Err(count));
    }
    let mut bytes = vec![0; 4 * expected];
    stream.read_exact(&mut bytes)?;
    Ok(Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()))
}

impl Exchange {
    /// Joins the run: node 0 listens on `main` until every other node has connected, the
    /// others connect to it; both within `timeout`. An error says what went wrong in words.
    pub fn join(nodes: usize, rank: usize, main: &str, timeout: Duration) -> Result<Self, String> {
        let address = resolve(main)?;
        if rank == 0 {
            let listener = TcpListener::bind(address).map_err(|e| {
                format!(
                    "cannot listen on {main} (distributed.main_address: it must be an address of \
                     node 0's own, with a free port): {e}"
                )
            })?;
            Self::accept(listener, nodes, timeout)
        } else {
            Self::connect(address, nodes, rank, timeout)
        }
    }

    fn accept(listener: TcpListener, nodes: usize, timeout: Duration) -> Result<Self, String> {
        let deadline = Instant::now() + timeout;
        let mut peers: Vec<Option<TcpStream>> = (1..nodes).map(|_| None).collect();
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot wait for the other nodes: {e}"))?;
        while peers.iter().any(Option::is_none) {
            let (mut stream, from) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let missing: Vec<String> = (1..nodes)
                            .filter(|r| peers[r - 1].is_none())
                            .map(|r| r.to_string())
                            .collect();
                        return Err(format!(
                            "no answer from the other nodes within {} s \
                             (distributed.node_timeout): node(s) {} never connected (they \
                             stopped, never started, or cannot reach this node's address)",
                            timeout.as_secs_f64(),
                            missing.join(", ")
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => return Err(format!("waiting for the other nodes: {e}")),
            };
            let hello = set_up(&stream, HELLO_WAIT.min(timeout)).and_then(|()| {
                let mut magic = [0; 8];
                stream.read_exact(&mut magic)?;
                let (n, r) = (read_u32(&mut stream)?, read_u32(&mut stream)?);
                Ok((magic, n as usize, r as usize))
            });
            let (n, r) = match hello {
                Ok((magic, n, r)) if &magic == HELLO => (n, r),
                _ => {
                    eprintln!("node 0: dropped a connection from {from}: not a node of this run");
                    continue;
                }
            };
            let refusal = if n != nodes {
                format!(
                    "node {r} (at {from}) was started with distributed.nodes {n}, node 0 with \
                     {nodes}: its distributed.nodes differs"
                )
            } else if r == 0 || r >= nodes {
                format!("a node at {from} was started with distributed.rank {r}, not in 1..{nodes}")
            } else if peers[r - 1].is_some() {
                format!("two nodes were started with distributed.rank {r} (the second at {from})")
            } else {
                String::new()
            };
            // A node that cannot hear its answer stops on its own.
            let _ = answer(&mut stream, &refusal);
            if !refusal.is_empty() {
                return Err(refusal);
            }
            set_up(&stream, timeout).map_err(|e| io_words(&e, r, timeout))?;
            peers[r - 1] = Some(stream);
        }
        Ok(Self::Main {
            peers: peers.into_iter().flatten().collect(),
        })
    }

    fn connect(
        address: SocketAddr,
        nodes: usize,
        rank: usize,
        timeout: Duration,
    ) -> Result<Self, String> {
        let deadline = Instant::now() + timeout;
        let mut stream = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(
                &address,
                left.clamp(Duration::from_millis(1), Duration::from_secs(1)),
            ) {
                Ok(stream) => break stream,
                Err(e) if left.is_zero() => {
                    return Err(format!(
                        "no answer from the other nodes within {} s (distributed.node_timeout): \
                         cannot reach node 0 at {address} (distributed.main_address): {e}",
                        timeout.as_secs_f64()
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let said = set_up(&stream, left)
            .and_then(|()| {
                let mut hello = HELLO.to_vec();
                hello.extend((nodes as u32).to_le_bytes());
                hello.extend((rank as u32).to_le_bytes());
                stream.write_all(&hello)?;
                let n = read_u32(&mut stream)? as usize;
                let mut refusal = vec![0; n];
                stream.read_exact(&mut refusal)?;
                Ok(String::from_utf8_lossy(&refusal).into_owned())
            })
            .map_err(|e| io_words(&e, 0, left))?;
        if !said.is_empty() {
            return Err(format!("node 0 refused this node: {said}"));
        }
        set_up(&stream, timeout).map_err(|e| io_words(&e, 0, timeout))?;
        Ok(Self::Peer { main: stream })
    }

    /// The element-wise sum of every node's `values` (each node passes as many), the same on
    /// every node. An error (a node stopped, did not answer within `timeout`, or sent a vector
    /// of another length) leaves the connections unusable: the run stops.
    pub fn sum(&mut self, values: Vec<f32>, timeout: Duration) -> Result<Vec<f32>, String> {
        let n = values.len();
        let unlike = |rank: usize, count: u64| {
            format!(
                "node {rank} sent {count} values, this node {n}: the nodes were not started alike"
            )
        };
        match self {
            Self::Main { peers } => {
                let mut sum = values;
                for (i, peer) in peers.iter_mut().enumerate() {
                    let theirs = receive(peer, n)
                        .map_err(|e| io_words(&e, i + 1, timeout))?
                        .map_err(|count| unlike(i + 1, count))?;
                    for (s, v) in sum.iter_mut().zip(theirs) {
                        *s += v;
                    }
                }
                for (i, peer) in peers.iter_mut().enumerate() {
                    send(peer, &sum).map_err(|e| io_words(&e, i + 1, timeout))?;
                }
                Ok(sum)
            }
            Self::Peer { main } => {
                send(main, &values).map_err(|e| io_words(&e, 0, timeout))?;
                receive(main, n)
                    .map_err(|e| io_words(&e, 0, timeout))?
                    .map_err(|count| unlike(0, count))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_address() -> String {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("127.0.0.1:{port}")
    }

    /// `nodes` exchanges on threads, node r given `f(r)`; their results in rank order.
    fn run<T: Send + 'static>(
        nodes: usize,
        f: impl Fn(usize, String) -> T + Send + Sync + Clone + 'static,
    ) -> Vec<T> {
        let main = free_address();
        let threads: Vec<_> = (0..nodes)
            .map(|r| {
                let (f, main) = (f.clone(), main.clone());
                std::thread::spawn(move || f(r, main))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    const T: Duration = Duration::from_secs(10);

    /// The first value of node r's vector: f32 sums of these differ with their order.
    const FIRST: [f32; 4] = [1.0, 1e8, -1e8, 1.0];

    #[test]
    fn every_node_gets_the_sum_in_rank_order_again_and_again() {
        let sums = run(4, |r, main| {
            let mut x = Exchange::join(4, r, &main, T).unwrap();
            (0..50)
                .map(|round| {
                    let v = vec![FIRST[r], (round * 10 + r) as f32];
                    x.sum(v, T).unwrap()
                })
                .collect::<Vec<_>>()
        });
        for (round, got) in sums[0].iter().enumerate() {
            // In f32 the order of the sum shows: ((1 + 1e8) - 1e8) + 1 is 1, node 0's value
            // last gives 2, the others' in reverse 0.
            let ordered = FIRST.iter().fold(0f32, |s, v| s + v);
            assert_eq!(ordered, 1.0);
            assert_eq!(FIRST[1..].iter().fold(0f32, |s, v| s + v) + FIRST[0], 2.0);
            assert_eq!(FIRST[1..].iter().rev().fold(FIRST[0], |s, v| s + v), 0.0);
            assert_eq!(got, &vec![ordered, (round * 40 + 6) as f32]);
        }
        assert!(sums.iter().all(|s| s == &sums[0]));
    }

    #[test]
    fn a_node_that_stops_stops_the_others_at_once_naming_it() {
        let errors = run(3, |r, main| {
            let mut x = Exchange::join(3, r, &main, T).unwrap();
            x.sum(vec![1.0], T).unwrap();
            if r == 2 {
                return String::new();
            }
            let started = Instant::now();
            let e = x.sum(vec![1.0], T).unwrap_err();
            assert!(started.elapsed() < T / 2, "{e}");
            e
        });
        assert!(
            errors[0].contains("node 2 closed the connection"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].contains("node 0 closed the connection"),
            "{}",
            errors[1]
        );
    }

    #[test]
    fn unlike_nodes_are_refused_and_strangers_dropped() {
        let main = free_address();
        let node0 = {
            let main = main.clone();
            std::thread::spawn(move || Exchange::join(2, 0, &main, T).map(|_| ()))
        };
        // Something else connects first and says nothing node-like: node 0 goes on waiting.
        loop {
            if let Ok(mut s) = TcpStream::connect(&main) {
                s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let e = Exchange::join(3, 1, &main, T).map(|_| ()).unwrap_err();
        assert!(e.contains("its distributed.nodes differs"), "{e}");
        let e = node0.join().unwrap().unwrap_err();
        assert!(e.contains("its distributed.nodes differs"), "{e}");

        let short = Duration::from_millis(300);
        let e = Exchange::join(2, 0, &free_address(), short)
            .map(|_| ())
            .unwrap_err();
        assert!(e.contains("node(s) 1 never connected"), "{e}");
        let e = Exchange::join(2, 1, &free_address(), short)
            .map(|_| ())
            .unwrap_err();
        assert!(e.contains("cannot reach node 0"), "{e}");
    }

    #[test]
    fn vectors_of_different_lengths_are_an_error() {
        let errors = run(2, |r, main| {
            let mut x = Exchange::join(2, r, &main, T).unwrap();
            x.sum(vec![0.0; 3 + r], T).unwrap_err()
        });
        assert!(
            errors[0].contains("node 1 sent 4 values, this node 3"),
            "{}",
            errors[0]
        );
    }
}
