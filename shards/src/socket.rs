//! The ends of the data path: accepting sockets, and non-blocking vectored writes straight to
//! a client socket. Called by the executor that owns the socket.

use std::io::{self, IoSlice};
use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, RawFd};
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
pub async fn accept_polled(
    listener: std::net::TcpListener,
    every: Duration,
    mut serve: impl FnMut(glommio::net::TcpStream),
) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
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
        glommio::timer::sleep(pause).await;
    }
}
