//! The handover between two agents in one process: real listening sockets and a real Unix
//! socket, descriptors passed by the fake (failing on demand) or by `SCM_RIGHTS`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::fdpass::{FakeFdPassing, FdPassing, ScmRights};
use super::protocol::HandoverError;
use super::*;

/// A fresh directory for one test's handover socket, removed on drop.
struct TempSocket {
    dir: PathBuf,
    path: PathBuf,
}

impl Drop for TempSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn socket_in_tempdir(test: &str) -> TempSocket {
    let dir = std::env::temp_dir().join(format!("sluice-handover-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("admin.handover.sock");
    TempSocket { dir, path }
}

fn loopback() -> std::io::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
}

/// An agent serving its handover socket at `path`, holding `n` loopback listeners.
struct OldAgent {
    restarts: Arc<Restarts>,
    listeners: Vec<TcpListener>,
    stop: watch::Sender<bool>,
}

impl OldAgent {
    async fn start(path: &Path, transport: Arc<dyn FdPassing>, n: usize) -> OldAgent {
        let restarts = Restarts::take_over_with(Some(path.to_owned()), transport)
            .await
            .unwrap();
        assert!(restarts.predecessor.lock().unwrap().is_none(), "alone");
        let listeners = (0..n)
            .map(|_| {
                restarts
                    .listeners
                    .tcp(([127, 0, 0, 1], 0).into(), loopback)
                    .unwrap()
            })
            .collect();
        let restarts = Arc::new(restarts);
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(Arc::clone(&restarts).serve(stopped));
        wait_until(|| path.exists()).await;
        OldAgent {
            restarts,
            listeners,
            stop,
        }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .map(|l| l.local_addr().unwrap())
            .collect()
    }

    async fn wait_for(&self, wanted: Succession) {
        let mut s = self.restarts.succession();
        tokio::time::timeout(Duration::from_secs(5), s.wait_for(|s| *s == wanted))
            .await
            .unwrap_or_else(|_| panic!("succession never became {wanted:?}"))
            .unwrap();
    }
}

async fn wait_until(mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met in 2 s");
}

fn echo_through(listener: &TcpListener, client: &mut TcpStream) {
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"x").unwrap();
    let mut byte = [0u8; 1];
    server.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"x");
}

/// The whole sequence: the new agent takes the same sockets, a connection queued in the
/// old one's accept backlog before the handover is accepted by the new one after the old one
/// closed its descriptors, and `ready` retires the old agent.
async fn hand_over_and_retire(test: &str, transport: Arc<dyn FdPassing>) {
    let tmp = socket_in_tempdir(test);
    let path = tmp.path.clone();
    let old = OldAgent::start(&path, Arc::clone(&transport), 2).await;
    let addrs = old.addrs();
    let mut queued = TcpStream::connect(addrs[0]).unwrap();

    let new = Restarts::take_over_with(Some(path.clone()), transport)
        .await
        .unwrap();
    old.wait_for(Succession::Starting).await;
    assert!(old.restarts.has_successor());
    // The old agent closes everything it had (as it does when it retires).
    old.restarts.listeners.close();
    drop(old.listeners);

    let taken: Vec<TcpListener> = addrs
        .iter()
        .map(|a| {
            new.listeners
                .tcp(*a, || panic!("{a} must be taken over, not bound"))
        })
        .collect::<Result<_, _>>()
        .unwrap();
    echo_through(&taken[0], &mut queued);
    let mut fresh = TcpStream::connect(addrs[1]).unwrap();
    echo_through(&taken[1], &mut fresh);

    new.serving();
    let mut s = old.restarts.succession();
    tokio::time::timeout(
        Duration::from_secs(5),
        s.wait_for(|s| *s == Succession::Ready),
    )
    .await
    .unwrap()
    .unwrap();
    // The new agent offers the same sockets to its own successor.
    let offered: Vec<SocketAddr> = new
        .listeners
        .offer()
        .unwrap()
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    let mut expected = addrs.clone();
    expected.sort();
    assert_eq!(offered, expected);
    let _ = old.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_agent_takes_the_same_sockets_with_the_fake() {
    hand_over_and_retire("fake", Arc::new(FakeFdPassing::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_agent_takes_the_same_sockets_over_scm_rights() {
    hand_over_and_retire("scm", Arc::new(ScmRights)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_agent_or_a_stale_socket_means_binding_afresh() {
    let tmp = socket_in_tempdir("stale");
    let path = tmp.path.clone();
    let none = Restarts::take_over_with(Some(path.clone()), Arc::new(ScmRights))
        .await
        .unwrap();
    assert!(none.predecessor.lock().unwrap().is_none());
    // An agent that died left its socket file: nobody answers on it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let stale = Restarts::take_over_with(Some(path), Arc::new(ScmRights))
        .await
        .unwrap();
    assert!(stale.predecessor.lock().unwrap().is_none());
    let l = stale
        .listeners
        .tcp(([127, 0, 0, 1], 0).into(), loopback)
        .unwrap();
    assert!(l.local_addr().unwrap().port() != 0, "bound afresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handover_leaves_the_old_agent_serving() {
    let tmp = socket_in_tempdir("fail");
    let path = tmp.path.clone();
    let fake = Arc::new(FakeFdPassing::default());
    let old = OldAgent::start(&path, fake.clone(), 1).await;
    fake.fail_sends.store(true, Ordering::SeqCst);
    let err = match Restarts::take_over_with(Some(path.clone()), fake.clone()).await {
        Ok(_) => panic!("the handover must fail"),
        Err(err) => format!("{err:#}"),
    };
    assert!(
        err.contains("taking the listeners over from the running agent: the running agent closed the connection before its offer was complete"),
        "{err}"
    );
    assert!(!old.restarts.has_successor());
    // Still the old agent's: it accepts, and offers it to the next try.
    let mut client = TcpStream::connect(old.addrs()[0]).unwrap();
    echo_through(&old.listeners[0], &mut client);
    fake.fail_sends.store(false, Ordering::SeqCst);
    let again = Restarts::take_over_with(Some(path), fake).await.unwrap();
    assert!(again.predecessor.lock().unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_descriptors_are_refused_and_the_old_agent_serves_on() {
    let tmp = socket_in_tempdir("lost");
    let path = tmp.path.clone();
    let fake = Arc::new(FakeFdPassing::default());
    let old = OldAgent::start(&path, fake.clone(), 2).await;
    fake.lose_fds.store(1, Ordering::SeqCst);
    let err = Restarts::take_over_with(Some(path), fake.clone())
        .await
        .err()
        .expect("a lost descriptor fails the handover");
    let root = err.root_cause().to_string();
    assert_eq!(
        root,
        "the running agent announced 2 listeners but 1 descriptors came"
    );
    assert_eq!(fake.sent_fds.load(Ordering::SeqCst), 2);
    // The new agent gave up (its connection closed): the old one is alone again.
    old.wait_for(Succession::Alone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_agent_that_dies_before_ready_gives_everything_back() {
    let tmp = socket_in_tempdir("died");
    let path = tmp.path.clone();
    let fake = Arc::new(FakeFdPassing::default());
    let old = OldAgent::start(&path, fake.clone(), 1).await;
    let new = Restarts::take_over_with(Some(path), fake).await.unwrap();
    old.wait_for(Succession::Starting).await;
    drop(new);
    old.wait_for(Succession::Alone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_that_is_not_the_announced_listener_is_refused() {
    let tmp = socket_in_tempdir("wrong");
    let path = tmp.path.clone();
    let server = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let other = loopback().unwrap();
    let other_addr = other.local_addr().unwrap();
    let impostor = std::thread::spawn(move || {
        let (stream, _) = server.accept().unwrap();
        let mut request = [0u8; 64];
        let _ = (&stream).read(&mut request).unwrap();
        let text = "offer 1 pid=1\n127.0.0.1:9\n";
        ScmRights
            .send(stream.as_fd(), text.as_bytes(), &[other.as_fd()])
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    });
    let err = Restarts::take_over_with(Some(path), Arc::new(ScmRights))
        .await
        .err()
        .expect("refused");
    impostor.join().unwrap();
    assert_eq!(
        err.root_cause().to_string(),
        format!(
            "descriptor 0 is not the listening socket on 127.0.0.1:9: it is bound to {other_addr}"
        )
    );
    let typed = err.downcast_ref::<HandoverError>();
    assert!(
        matches!(typed, Some(HandoverError::NotTheListener { .. })),
        "{err:?}"
    );
}

#[test]
fn released_listeners_are_not_offered_and_closing_offers_nothing() {
    let inherited = loopback().unwrap();
    let inherited_addr = inherited.local_addr().unwrap();
    let unclaimed = loopback().unwrap();
    let unclaimed_addr = unclaimed.local_addr().unwrap();
    let l = Listeners::new(vec![
        (inherited_addr, inherited),
        (unclaimed_addr, unclaimed),
    ]);
    let taken = l.tcp(inherited_addr, || panic!("inherited")).unwrap();
    assert_eq!(taken.local_addr().unwrap(), inherited_addr);
    let fresh = l.tcp(([127, 0, 0, 1], 0).into(), loopback).unwrap();
    let fresh_addr = fresh.local_addr().unwrap();
    let offered = |l: &Listeners| -> Vec<SocketAddr> {
        l.offer().unwrap().into_iter().map(|(a, _)| a).collect()
    };
    let mut both = vec![inherited_addr, fresh_addr];
    both.sort();
    assert_eq!(offered(&l), both);
    assert_eq!(l.drop_unclaimed(), vec![unclaimed_addr]);
    assert!(
        TcpStream::connect(unclaimed_addr).is_err(),
        "an unclaimed inherited listener is closed"
    );
    l.release(fresh_addr);
    assert_eq!(offered(&l), vec![inherited_addr]);
    l.close();
    assert!(offered(&l).is_empty());
    let later = l.tcp(([127, 0, 0, 1], 0).into(), loopback).unwrap();
    assert!(
        offered(&l).is_empty(),
        "{later:?} bound after closing is not offered"
    );
}

#[test]
fn the_handover_socket_sits_next_to_the_admin_socket() {
    assert_eq!(
        socket_path(Path::new("/run/sluice/admin.sock")),
        Path::new("/run/sluice/admin.handover.sock")
    );
    assert_eq!(
        socket_path(Path::new("/tmp/w/node-a-admin.sock")),
        Path::new("/tmp/w/node-a-admin.handover.sock")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_file_is_removed_at_exit_only_while_it_is_ours() {
    let tmp = socket_in_tempdir("ours");
    let path = tmp.path.clone();
    let (first, first_id) = bind_socket(&path).unwrap();
    let (_second, _) = bind_socket(&path).unwrap();
    drop(first);
    remove_socket_if_ours(&path, first_id);
    assert!(path.exists(), "the successor's socket stays");
    let id = SocketFile::of(&path).unwrap();
    remove_socket_if_ours(&path, id);
    assert!(!path.exists());
}
