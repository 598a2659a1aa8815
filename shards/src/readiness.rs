//! Which open connections have something to do: one epoll set per shard (through mio,
//! edge-triggered, read and write interest registered once), looked at without blocking on
//! every pass of the shard's readiness loop ([`crate::connection::serve_open`]).
//!
//! An open connection is served without a task, a future or a glommio poll source of its own:
//! its socket sits in this set, and what it holds while idle is its `Conn` alone (see
//! docs/architecture.md, "Memory of an idle connection"). Shard-local (`!Send`).

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

/// What a connection is ready for, as one pass found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ready {
    /// Bytes to read, the peer's EOF, or an error a read will report.
    pub read: bool,
    /// Room in the socket buffer (or an error a write will report).
    pub write: bool,
    /// The peer may have closed with no further edge to say so: it did (or the socket
    /// failed), or this is a re-look ([`Readiness::read_again`]) after the edge that could have
    /// carried the FIN was consumed. Read until the socket says "would block" or EOF.
    pub closed: bool,
}

/// Most readiness events taken from the kernel in one pass; the rest wait for the next.
const EVENTS_PER_PASS: usize = 1024;

pub(crate) struct Readiness {
    poll: RefCell<Poll>,
    events: RefCell<Events>,
    /// Connections that stopped reading at their per-pass limit with input perhaps left:
    /// the edge-triggered set will not report them again, so the next pass does.
    again: RefCell<Vec<u64>>,
    /// Connections asked to close since the last pass.
    closing: RefCell<Vec<u64>>,
}

impl Readiness {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            poll: RefCell::new(Poll::new()?),
            events: RefCell::new(Events::with_capacity(EVENTS_PER_PASS)),
            again: RefCell::default(),
            closing: RefCell::default(),
        })
    }

    /// Watches `fd` for connection `id`. A socket that is already readable is reported on the
    /// next pass (the kernel checks readiness when the fd is added).
    pub(crate) fn add(&self, fd: RawFd, id: u64) -> io::Result<()> {
        self.poll.borrow().registry().register(
            &mut SourceFd(&fd),
            token(id),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// The epoll set's own descriptor: readable while some watched socket has news (the
    /// shard's idle nap waits on it).
    pub(crate) fn fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.poll.borrow().as_raw_fd()
    }

    /// Stops watching `fd`, before the socket is handed to another owner or closed.
    pub(crate) fn remove(&self, fd: RawFd) {
        // An fd that is not registered has nothing to remove.
        let _ = self.poll.borrow().registry().deregister(&mut SourceFd(&fd));
    }

    /// Connection `id` read as much as one pass allows; look at it again next pass.
    pub(crate) fn read_again(&self, id: u64) {
        self.again.borrow_mut().push(id);
    }

    /// Connection `id` was asked to close; the next pass acts on it.
    pub(crate) fn ask_close(&self, id: u64) {
        self.closing.borrow_mut().push(id);
    }

    /// Takes the connections asked to close since the last call.
    pub(crate) fn take_closing(&self, into: &mut Vec<u64>) {
        into.append(&mut self.closing.borrow_mut());
    }

    /// Appends every connection with something to do, without blocking: first those left
    /// over from the last pass, then what the kernel reports. A connection may appear twice.
    /// Cost: one `epoll_wait` system call.
    pub(crate) fn take_ready(&self, into: &mut Vec<(u64, Ready)>) -> io::Result<()> {
        into.extend(self.again.borrow_mut().drain(..).map(|id| {
            let ready = Ready {
                read: true,
                write: false,
                closed: true,
            };
            (id, ready)
        }));
        let mut events = self.events.borrow_mut();
        match self
            .poll
            .borrow_mut()
            .poll(&mut events, Some(Duration::ZERO))
        {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        into.extend(events.iter().map(|e| {
            let error = e.is_error();
            let closed = e.is_read_closed() || error;
            let ready = Ready {
                read: e.is_readable() || closed,
                write: e.is_writable() || e.is_write_closed() || error,
                closed,
            };
            (e.token().0 as u64, ready)
        }));
        Ok(())
    }
}

fn token(id: u64) -> Token {
    Token(id as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, server)
    }

    fn ready_now(r: &Readiness) -> Vec<(u64, Ready)> {
        let mut out = Vec::new();
        // Loopback delivery is immediate, but give the kernel a moment to mark readiness.
        for _ in 0..100 {
            r.take_ready(&mut out).unwrap();
            if out.iter().any(|(_, x)| x.read) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        out
    }

    #[test]
    fn reports_input_once_per_edge_and_leftovers_again() {
        let r = Readiness::new().unwrap();
        let (mut client, server) = pair();
        r.add(server.as_raw_fd(), 7).unwrap();
        let mut first = Vec::new();
        r.take_ready(&mut first).unwrap();
        assert!(
            first.iter().all(|(_, x)| !x.read),
            "nothing sent yet: {first:?}"
        );
        assert!(first.iter().all(|(id, _)| *id == 7));

        client.write_all(b"hello").unwrap();
        let seen = ready_now(&r);
        assert!(seen.contains(&(
            7,
            Ready {
                read: true,
                write: true,
                closed: false
            }
        )));
        // Edge-triggered: unread input is not reported again by the kernel...
        let mut quiet = Vec::new();
        r.take_ready(&mut quiet).unwrap();
        assert!(quiet.is_empty(), "{quiet:?}");
        // ...so a connection that stopped early asks for another look.
        r.read_again(7);
        r.take_ready(&mut quiet).unwrap();
        assert_eq!(
            quiet,
            vec![(
                7,
                Ready {
                    read: true,
                    write: false,
                    closed: true
                }
            )]
        );

        r.remove(server.as_raw_fd());
        client.write_all(b"more").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut none = Vec::new();
        r.take_ready(&mut none).unwrap();
        assert!(none.is_empty(), "removed: {none:?}");
    }

    #[test]
    fn peer_close_is_reported_as_readable() {
        let r = Readiness::new().unwrap();
        let (client, server) = pair();
        r.add(server.as_raw_fd(), 3).unwrap();
        let mut out = Vec::new();
        r.take_ready(&mut out).unwrap();
        drop(client);
        let seen = ready_now(&r);
        assert!(
            seen.iter().any(|(id, x)| *id == 3 && x.read && x.closed),
            "{seen:?}"
        );
    }

    #[test]
    fn close_requests_are_taken_once() {
        let r = Readiness::new().unwrap();
        r.ask_close(1);
        r.ask_close(2);
        let mut out = Vec::new();
        r.take_closing(&mut out);
        assert_eq!(out, vec![1, 2]);
        out.clear();
        r.take_closing(&mut out);
        assert!(out.is_empty());
    }
}
