//! The ends of the data path: accepting sockets, and non-blocking reads and vectored writes
//! straight to a client socket. Called by the executor that owns the socket.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use socket2::SockRef;

/// One `sendmsg` of every slice, without blocking and without SIGPIPE. Returns bytes written;
/// `WouldBlock` when the socket buffer is full. Cost: one system call.
pub fn send_vectored(fd: RawFd, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: `fd` is the socket of a connection whose `TcpStream` outlives this call: the
    // shard only writes to connections still registered, and unregisters before dropping.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    SockRef::from(&fd).send_vectored_with_flags(iov, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// One `recv` into `buf` without blocking. `Ok(0)` is the peer's EOF; `WouldBlock` when
/// nothing is waiting. Cost: one system call.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `fd` is an open socket owned by the caller's connection (as in `send_vectored`);
    // `buf` is valid for `buf.len()` writable bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Takes a socket out of a glommio stream: a duplicate of its fd, so that dropping the stream
/// (which closes its own fd and cancels its pending poll) leaves the connection open.
pub fn detach(stream: &glommio::net::TcpStream) -> io::Result<OwnedFd> {
    // SAFETY: the fd belongs to `stream`, alive for this call.
    unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned()
}

/// Half-closes the write side so the peer reads our close frame, then EOF.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: as in `send_vectored`.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = SockRef::from(&fd).shutdown(std::net::Shutdown::Write);
}

/// Accepts connections on `listener` for as long as the calling task lives, handing each to
/// `serve` as a glommio stream. The listener is polled with plain non-blocking `accept` every
/// `every` (draining its whole backlog each time) rather than through an io_uring accept: under
/// sustained load glommio 0.9 was seen leaving new connections in the accept queue for
/// seconds (until the load stopped), which a timer-driven poll does not do. Out of
/// descriptors or another transient error: the poll backs off 5 ms and goes on.
///
/// While it waits for the next poll, and only then, the listener is in `nap_fds` (the
/// executor's nap ends when a client connects; see `crate::executor::WakesNap`); not during
/// a back-off, when a connection the process cannot take would keep it readable.
pub async fn accept_polled(
    listener: std::net::TcpListener,
    every: Duration,
    nap_fds: Rc<RefCell<Vec<RawFd>>>,
    mut serve: impl FnMut(glommio::net::TcpStream),
) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let fd = listener.as_raw_fd();
    loop {
        let mut pause = every;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    // SAFETY: the fd comes from a connected std TcpStream we own and give up.
                    serve(unsafe { glommio::net::TcpStream::from_raw_fd(stream.into_raw_fd()) });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    pause = Duration::from_millis(5);
                    break;
                }
            }
        }
        let _waking = (pause == every).then(|| crate::executor::WakesNap::new(&nap_fds, fd));
        glommio::timer::sleep(pause).await;
    }
}
