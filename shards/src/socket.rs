//! The last step of the data path: non-blocking vectored writes straight to a client socket.
//! Any thread; called by the shard that owns the socket.

use std::io::{self, IoSlice};
use std::os::fd::{BorrowedFd, RawFd};

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
