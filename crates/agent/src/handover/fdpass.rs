//! Passing descriptors over a Unix stream socket (`SCM_RIGHTS`), behind a trait so that the
//! handover protocol is unit-tested with a fake that fails on demand.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Most descriptors sent in one message (the kernel's limit, `SCM_MAX_FD`, is 253); the
/// receiver's control buffer is sized for exactly this many.
pub const MAX_FDS_PER_MESSAGE: usize = 32;

/// Sends and receives bytes with descriptors attached.
pub trait FdPassing: Send + Sync + 'static {
    /// Sends `data` (at most [`MAX_FDS_PER_MESSAGE`] descriptors attached to its first byte);
    /// returns the bytes sent, which may be fewer than `data.len()` (the descriptors went).
    fn send(
        &self,
        socket: BorrowedFd<'_>,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<usize>;

    /// Receives up to `buf.len()` bytes and the descriptors that came with them (close-on-exec,
    /// so that the `nft` and other children never inherit a listening socket).
    fn recv(&self, socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)>;
}

/// The kernel's `sendmsg`/`recvmsg` with an `SCM_RIGHTS` control message: the receiver gets
/// new descriptors for the very same open sockets.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScmRights;

impl FdPassing for ScmRights {
    fn send(
        &self,
        socket: BorrowedFd<'_>,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<usize> {
        if fds.len() > MAX_FDS_PER_MESSAGE {
            return Err(io::Error::other(format!(
                "{} descriptors in one message (at most {MAX_FDS_PER_MESSAGE})",
                fds.len()
            )));
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        // MSG_NOSIGNAL: a successor that died gives EPIPE, not a SIGPIPE that kills us.
        sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(data)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(io::Error::from)
    }

    fn recv(&self, socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        // ENOBUFS when the control data was truncated (more descriptors than announced).
        for cmsg in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                for fd in received {
                    // SAFETY: the kernel has just installed `fd` in our descriptor table for
                    // this message (SCM_RIGHTS); nothing else refers to it, so we own it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Ok((msg.bytes, fds))
    }
}

/// An in-process stand-in: bytes go over the real socket, descriptors are duplicated into a
/// queue the receiving side takes them from (what `SCM_RIGHTS` does between processes).
/// Fails on demand.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct FakeFdPassing {
    queue: std::sync::Mutex<std::collections::VecDeque<OwnedFd>>,
    /// Every send fails (e.g. the successor's socket broke).
    pub fail_sends: std::sync::atomic::AtomicBool,
    /// This many of the next descriptors sent are lost on the way.
    pub lose_fds: std::sync::atomic::AtomicUsize,
    /// Descriptors sent so far.
    pub sent_fds: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl FdPassing for FakeFdPassing {
    fn send(
        &self,
        socket: BorrowedFd<'_>,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<usize> {
        use std::sync::atomic::Ordering;
        if self.fail_sends.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected send failure"));
        }
        // Queued before the bytes go, as the kernel attaches them to the first byte.
        let mut queue = self.queue.lock().unwrap();
        for fd in fds {
            self.sent_fds.fetch_add(1, Ordering::SeqCst);
            let lost = self
                .lose_fds
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if !lost {
                queue.push_back(fd.try_clone_to_owned()?);
            }
        }
        drop(queue);
        nix::unistd::write(socket, data).map_err(io::Error::from)
    }

    fn recv(&self, socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        let n = nix::unistd::read(socket, buf).map_err(io::Error::from)?;
        let fds = self.queue.lock().unwrap().drain(..).collect();
        Ok((n, fds))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    /// The real thing, over a socketpair: the received descriptor is the same listening
    /// socket (same address; a connection made before the handover is accepted from it).
    #[test]
    fn scm_rights_passes_the_same_listening_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = std::net::TcpStream::connect(addr).unwrap();
        let sent = ScmRights
            .send(a.as_fd(), b"hello", &[listener.as_fd()])
            .unwrap();
        assert_eq!(sent, 5);
        drop(listener);
        let mut buf = [0u8; 16];
        let (n, fds) = ScmRights.recv(b.as_fd(), &mut buf).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"hello"[..], 1));
        let taken = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(taken.local_addr().unwrap(), addr);
        let (mut accepted, _) = taken.accept().unwrap();
        queued.write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        accepted.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }

    #[test]
    fn scm_rights_refuses_more_descriptors_than_the_receiver_expects() {
        let (a, _b) = UnixStream::pair().unwrap();
        let files: Vec<_> = (0..=MAX_FDS_PER_MESSAGE)
            .map(|_| a.try_clone().unwrap())
            .collect();
        let fds: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
        let err = ScmRights.send(a.as_fd(), b"x", &fds).unwrap_err();
        assert!(err.to_string().contains("at most 32"), "{err}");
    }
}
