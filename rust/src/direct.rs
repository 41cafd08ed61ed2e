//! Frames to many sockets in one call: one frame to all (the paced fan-out path), or one
//! frame each (the answers of one loop turn, RPC).
//!
//! The caller hands over only sockets whose transport has nothing queued, so writing here
//! first cannot reorder anything; whatever the kernel does not take is returned to the
//! caller, who hands it to the transport.
//!
//! Two ways to the kernel, reporting the same: on Linux io_uring (one submission for many
//! sends; measured 15-25 % more deliveries per CPU-second than the loop, see the README),
//! and a loop of `send()` calls, used for small batches, where the kernel refuses io_uring,
//! with `WSE_FAST_IO_URING=0`, and for the sockets io_uring did not reach.
//!
//! Each socket is reported once and gets the frame at most once, also when io_uring fails
//! part-way: a socket whose send the kernel took is reported from its completion; only the
//! sockets whose send the kernel never took go through the loop.
//!
//! Invariants of the io_uring path (the ring is per thread and only this module uses it):
//! - Between calls the ring holds nothing: no queued entry, no operation in flight, no
//!   unread completion. A call that cannot leave it so (a push or `io_uring_enter` failed)
//!   waits as below, then drops it; the thread makes a new one on its next call,
//!   `RINGS_PER_THREAD` in all, then keeps to the loop.
//! - The kernel reads a send's buffer and fd only once it has taken the entry from the
//!   submission queue, which happens only inside `io_uring_enter` on this thread (no SQPOLL
//!   thread). A call returns only after every entry the kernel took has its completion, even
//!   when `io_uring_enter` fails: so nothing reads a frame after the call returns, and every
//!   socket sent to has its result.
//! - Entries queued but not taken when `io_uring_enter` fails (or when a push fails) are never
//!   taken: the ring holding them is dropped without being entered again. A later call thus
//!   never sends a buffer that may be freed, nor to fds that may by then name other sockets.
//! - Waiting for completions after a failed `io_uring_enter` reads the completion queue in
//!   shared memory and needs no working `io_uring_enter`. It ends: a MSG_DONTWAIT send
//!   completes while it is submitted (or, if the kernel punts it, on its own, its completion
//!   task work run when the thread next leaves a system call); the completion queue cannot
//!   overflow, which would hold completions back, as it has room for twice the entries of
//!   one submission and is empty when the submission starts.

/// What each socket is sent: the same frame to all, or its own (by position in `fds`).
#[derive(Clone, Copy)]
pub enum Frames<'a> {
    Same(&'a [u8]),
    Each(&'a [&'a [u8]]),
}

impl<'a> Frames<'a> {
    /// The frame of the socket at `index` (of the whole call's `fds`).
    fn get(self, index: usize) -> &'a [u8] {
        match self {
            Frames::Same(data) => data,
            Frames::Each(frames) => frames[index],
        }
    }
}

impl<'a> From<&'a [u8]> for Frames<'a> {
    fn from(data: &'a [u8]) -> Self {
        Frames::Same(data)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Frames<'a> {
    fn from(data: &'a [u8; N]) -> Self {
        Frames::Same(data)
    }
}

/// Sends each socket its frame without blocking. Returns `(index, sent)` for each socket the
/// kernel did not take all of its frame for: `sent` bytes went out, or minus the errno. In
/// the common case every send completes and nothing is returned. With `Frames::Each`, `fds`
/// and the frames have the same length.
pub fn send_to_all<'a>(fds: &[i32], frames: impl Into<Frames<'a>>) -> Vec<(usize, isize)> {
    let frames = frames.into();
    // A ring submission costs more than it saves for a few sends (the fan-out matrix: at 10
    // connections the loop was ahead in every cell).
    #[cfg(target_os = "linux")]
    if fds.len() >= uring::MIN_BATCH && uring::wanted() {
        return uring::send_then_loop(fds, frames);
    }
    let mut short = Vec::new();
    send_each(fds, frames, 0, &mut short);
    short
}

/// The `send()` loop: appends to `short` what `send_to_all` returns for `fds`, each index
/// raised by `first` (the position of `fds[0]` in the caller's list).
fn send_each(fds: &[i32], frames: Frames<'_>, first: usize, short: &mut Vec<(usize, isize)>) {
    for (i, &fd) in fds.iter().enumerate() {
        let data = frames.get(first + i);
        // Safety: `data` is a live, immutable buffer of `data.len()` bytes; a bad fd is
        // reported by the kernel as EBADF, not undefined behaviour.
        let sent = unsafe {
            libc::send(
                fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if sent < 0 {
            let errno = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            short.push((first + i, -(errno as isize)));
        } else if (sent as usize) < data.len() {
            short.push((first + i, sent));
        }
    }
}

#[cfg(target_os = "linux")]
pub mod uring {
    use std::cell::RefCell;
    use std::io;

    use io_uring::{opcode, types, IoUring};

    use super::Frames;

    /// Submission queue size: the most sends one submission carries. Unit tests use a small
    /// ring so that a few dozen sockets take several submissions.
    const ENTRIES: usize = if cfg!(test) { 16 } else { 1024 };
    /// Fewer sockets than this go through the send() loop.
    pub const MIN_BATCH: usize = 32;
    /// Rings one thread may make: its first, and replacements for rings dropped after a
    /// failure. A kernel that fails every ring (a seccomp policy refusing `io_uring_enter`,
    /// say) thus costs a few calls, not a ring setup on every call.
    const RINGS_PER_THREAD: u8 = 4;

    /// The thread's ring, and the process that made it: a child of fork() must not share
    /// its parent's.
    struct Ring {
        ring: Option<IoUring>, // None before the first call and after a failure
        pid: u32,
        rings_left: u8,
    }

    thread_local! {
        static RING: RefCell<Option<Ring>> = const { RefCell::new(None) };
    }

    /// io_uring unless `WSE_FAST_IO_URING=0` (read once per thread).
    pub fn wanted() -> bool {
        thread_local! {
            static WANTED: bool = std::env::var("WSE_FAST_IO_URING").map_or(true, |v| v != "0");
        }
        WANTED.with(|w| *w)
    }

    /// What io_uring did with one call's sockets.
    #[derive(Debug, PartialEq)]
    pub struct Sent {
        /// `(index, sent)` as `super::send_to_all` reports it, for sockets before `unsent_from`.
        pub short: Vec<(usize, isize)>,
        /// The sockets from this index on were not sent to: there is no ring here, or it failed
        /// before the kernel took their entries. Each socket before it has its completion.
        pub unsent_from: usize,
    }

    /// `super::send_to_all` through io_uring, then the send() loop for the sockets io_uring
    /// did not reach.
    pub fn send_then_loop<'a>(fds: &[i32], frames: impl Into<Frames<'a>>) -> Vec<(usize, isize)> {
        let frames = frames.into();
        let Sent {
            mut short,
            unsent_from,
        } = send_to_all(fds, frames);
        if let Some(rest) = fds.get(unsent_from..) {
            super::send_each(rest, frames, unsent_from, &mut short);
        }
        short
    }

    /// Like `super::send_to_all`, through io_uring, for as many sockets as it reaches.
    pub fn send_to_all<'a>(fds: &[i32], frames: impl Into<Frames<'a>>) -> Sent {
        let frames = frames.into();
        let mut sent = Sent {
            short: Vec::new(),
            unsent_from: 0,
        };
        let fits = |data: &[u8]| u32::try_from(data.len()).is_ok();
        let all_fit = match frames {
            Frames::Same(data) => fits(data),
            Frames::Each(each) => each.iter().all(|data| fits(data)),
        };
        if !all_fit {
            return sent; // a send entry's length is 32 bits: the loop sends them all
        }
        RING.with(|cell| {
            let mut slot = cell.borrow_mut();
            let pid = std::process::id();
            if slot.as_ref().is_none_or(|r| r.pid != pid) {
                *slot = Some(Ring {
                    ring: None,
                    pid,
                    rings_left: RINGS_PER_THREAD,
                });
            }
            let Some(state) = slot.as_mut() else {
                return sent;
            };
            if state.ring.is_none() && state.rings_left > 0 {
                state.rings_left -= 1;
                state.ring = IoUring::new(ENTRIES as u32).ok();
                if state.ring.is_none() {
                    state.rings_left = 0; // the kernel refuses io_uring here
                }
            }
            let Some(ring) = state.ring.as_mut() else {
                return sent;
            };
            for (n, chunk) in fds.chunks(ENTRIES).enumerate() {
                let first = n * ENTRIES;
                match send_chunk(ring, chunk, first, frames, &mut sent.short) {
                    Ok(()) => sent.unsent_from = first + chunk.len(),
                    Err(taken) => {
                        sent.unsent_from = first + taken;
                        // Entries the kernel did not take are still queued: dropping the ring
                        // (it is never entered again) is what keeps them from being sent.
                        state.ring = None;
                        break;
                    }
                }
            }
            sent.short.sort_unstable();
            sent
        })
    }

    /// Sends each socket of `chunk` (at most ENTRIES) its frame through `ring`, which holds
    /// nothing. Reports into `short` each short send, its index raised by `first`.
    ///
    /// Ok: every socket has its completion, and the ring holds nothing again. Err(taken): the
    /// ring failed; the first `taken` sockets have their completion, the kernel never took
    /// the other sockets' entries, and those may still be queued: the caller must drop the ring.
    fn send_chunk(
        ring: &mut IoUring,
        chunk: &[i32],
        first: usize,
        frames: Frames<'_>,
        short: &mut Vec<(usize, isize)>,
    ) -> Result<(), usize> {
        let mut pushed = 0;
        {
            let mut sq = ring.submission();
            for (j, &fd) in chunk.iter().enumerate() {
                let data = frames.get(first + j);
                // the caller checked that every frame's length fits 32 bits
                let len = data.len() as u32;
                let send = opcode::Send::new(types::Fd(fd), data.as_ptr(), len)
                    .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                    .build()
                    .user_data((first + j) as u64);
                // Safety: the kernel reads a frame only for entries it takes, and every taken
                // entry is completed before this call returns (see the module invariants).
                if fault::push_fails(first + j) || unsafe { sq.push(&send) }.is_err() {
                    break;
                }
                pushed += 1;
            }
        }
        let mut reaped = 0;
        let mut failed = pushed < chunk.len();
        while !failed && reaped < pushed {
            match fault::submit_and_wait(ring, pushed - reaped, first) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => failed = true,
            }
            reaped += reap(ring, frames, short);
        }
        if !failed {
            return Ok(());
        }
        // The kernel takes entries in queue order, so the taken ones are the first `taken`.
        let taken = pushed - ring.submission().len();
        while reaped < taken {
            // The kernel posts their completions without being entered; leaving a system
            // call runs any completion task work it queued for this thread.
            std::thread::yield_now();
            reaped += reap(ring, frames, short);
        }
        Err(taken)
    }

    /// Reads the completions posted so far, reporting the short ones; returns how many.
    fn reap(ring: &mut IoUring, frames: Frames<'_>, short: &mut Vec<(usize, isize)>) -> usize {
        let mut reaped = 0;
        for cqe in ring.completion() {
            reaped += 1;
            let index = cqe.user_data() as usize;
            let sent = cqe.result() as isize;
            if sent < 0 || (sent as usize) < frames.get(index).len() {
                short.push((index, sent));
            }
        }
        reaped
    }

    /// Failure injection for the unit tests; compiled out of every other build.
    #[cfg(not(test))]
    mod fault {
        use super::*;

        #[inline(always)]
        pub(super) fn push_fails(_index: usize) -> bool {
            false
        }

        #[inline(always)]
        pub(super) fn submit_and_wait(
            ring: &mut IoUring,
            want: usize,
            _first: usize,
        ) -> io::Result<usize> {
            ring.submit_and_wait(want)
        }
    }

    #[cfg(test)]
    pub(crate) mod fault {
        use super::*;
        use std::cell::Cell;

        /// One failure, armed for the next call on this thread.
        #[derive(Clone, Copy)]
        pub(crate) enum Fault {
            /// Pushing socket `at`'s entry fails, as if the submission queue were full.
            Push { at: usize },
            /// `io_uring_enter` lets the kernel take the entries before socket `at` in its
            /// submission, then fails (as with ENOMEM), leaving the rest queued.
            Enter { at: usize },
        }

        thread_local! {
            static ARMED: Cell<Option<Fault>> = const { Cell::new(None) };
        }

        pub(crate) fn arm(fault: Fault) {
            ARMED.set(Some(fault));
        }

        pub(super) fn push_fails(index: usize) -> bool {
            if let Some(Fault::Push { at }) = ARMED.get() {
                if at == index {
                    ARMED.set(None);
                    return true;
                }
            }
            false
        }

        pub(super) fn submit_and_wait(
            ring: &mut IoUring,
            want: usize,
            first: usize,
        ) -> io::Result<usize> {
            if let Some(Fault::Enter { at }) = ARMED.get() {
                let queued = ring.submission().len();
                if (first..first + queued).contains(&at) {
                    ARMED.set(None);
                    // Safety: plain submission of queued entries, no wait, no argument.
                    unsafe {
                        ring.submitter().enter::<libc::sigset_t>(
                            (at - first) as u32,
                            0,
                            0,
                            None,
                        )?;
                    }
                    return Err(io::Error::from_raw_os_error(libc::ENOMEM));
                }
            }
            ring.submit_and_wait(want)
        }

        /// Whether this thread has a ring, holding no queued entry and no unread completion.
        pub(crate) fn ring_is_empty() -> bool {
            RING.with(|cell| {
                let mut slot = cell.borrow_mut();
                let Some(ring) = slot.as_mut().and_then(|r| r.ring.as_mut()) else {
                    return false;
                };
                ring.submission().is_empty() && ring.completion().is_empty()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read};
    use std::os::unix::io::AsRawFd;
    use std::os::unix::net::UnixStream;

    const EBADF: isize = -(libc::EBADF as isize);

    #[test]
    fn sends_to_every_socket_and_reports_errors() {
        let (a, mut a_peer) = UnixStream::pair().unwrap();
        let (b, mut b_peer) = UnixStream::pair().unwrap();
        let results = send_to_all(&[a.as_raw_fd(), b.as_raw_fd(), -1], b"frame");
        assert_eq!(results, vec![(2, EBADF)]);
        let mut buf = [0u8; 5];
        a_peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"frame");
        b_peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"frame");
    }

    /// Frames of different lengths, one per socket: "frame 0", "frame 1", ...
    fn own_frames(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("frame {i}").into_bytes()).collect()
    }

    #[test]
    fn each_socket_gets_its_own_frame() {
        let (ours, mut peers) = socket_pairs(40);
        let mut fds: Vec<i32> = ours.iter().map(AsRawFd::as_raw_fd).collect();
        fds[5] = -1;
        let owned = own_frames(40);
        let frames: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        // 40 sockets: io_uring on Linux; 3: the send() loop
        for count in [40, 3] {
            let short = send_to_all(&fds[..count], Frames::Each(&frames[..count]));
            let expected: Vec<(usize, isize)> = if count > 5 { vec![(5, EBADF)] } else { vec![] };
            assert_eq!(short, expected);
            for (i, peer) in peers.iter_mut().enumerate() {
                let want: &[u8] = if i == 5 || i >= count { b"" } else { frames[i] };
                assert_eq!(drain(peer), want, "socket {i}");
            }
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn own_frames_survive_a_failed_enter_once_each() {
        let (ours, mut peers) = socket_pairs(40);
        let fds: Vec<i32> = ours.iter().map(AsRawFd::as_raw_fd).collect();
        let owned = own_frames(40);
        let frames: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        uring::fault::arm(uring::fault::Fault::Enter { at: 20 });
        assert_eq!(uring::send_then_loop(&fds, Frames::Each(&frames)), vec![]);
        for (i, peer) in peers.iter_mut().enumerate() {
            assert_eq!(drain(peer), frames[i], "socket {i}");
        }
    }

    /// `n` connected pairs: the sockets to send on, and their peers (non-blocking) to read.
    fn socket_pairs(n: usize) -> (Vec<UnixStream>, Vec<UnixStream>) {
        (0..n)
            .map(|_| {
                let (ours, peer) = UnixStream::pair().unwrap();
                peer.set_nonblocking(true).unwrap();
                (ours, peer)
            })
            .unzip()
    }

    /// Everything `peer` has received and not yet read.
    fn drain(peer: &mut UnixStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match peer.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return got,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Reads every peer: those `sent_to` says were sent to must have `frame` once, the others
    /// nothing.
    fn expect_frames(peers: &mut [UnixStream], frame: &[u8], sent_to: impl Fn(usize) -> bool) {
        for (i, peer) in peers.iter_mut().enumerate() {
            let want: &[u8] = if sent_to(i) { frame } else { b"" };
            assert_eq!(drain(peer), want, "socket {i}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn io_uring_reports_like_the_send_loop() {
        let (ours, mut peers) = socket_pairs(2);
        let fds = [ours[0].as_raw_fd(), -1, ours[1].as_raw_fd()];
        let sent = uring::send_to_all(&fds, b"frame");
        assert_eq!(
            sent,
            uring::Sent {
                short: vec![(1, EBADF)],
                unsent_from: 3,
            }
        );
        expect_frames(&mut peers, b"frame", |_| true);
        assert!(uring::fault::ring_is_empty());
    }

    /// 40 sockets (bad fds at 3 and 30) and `fault` in the submission of 16..32 (unit tests'
    /// rings hold 16 entries): `unsent_from` is the first socket io_uring must leave alone.
    #[cfg(target_os = "linux")]
    fn survives(fault: uring::fault::Fault, unsent_from: usize) {
        let (ours, mut peers) = socket_pairs(40);
        let mut fds: Vec<i32> = ours.iter().map(AsRawFd::as_raw_fd).collect();
        fds[3] = -1;
        fds[30] = -1;
        let good = |i: usize| i != 3 && i != 30;

        // Every socket is sent the frame once and reported once.
        uring::fault::arm(fault);
        let short = uring::send_then_loop(&fds, b"first");
        assert_eq!(short, vec![(3, EBADF), (30, EBADF)]);
        expect_frames(&mut peers, b"first", good);

        // Nothing of that call stayed in the ring: the next call sends one frame to each.
        let short = uring::send_then_loop(&fds, b"second");
        assert_eq!(short, vec![(3, EBADF), (30, EBADF)]);
        expect_frames(&mut peers, b"second", good);
        assert!(uring::fault::ring_is_empty());

        // The loop gets only the sockets without a completion.
        uring::fault::arm(fault);
        let sent = uring::send_to_all(&fds, b"third");
        let short = [(3, EBADF), (30, EBADF)];
        let short = short.into_iter().filter(|&(i, _)| i < unsent_from);
        let expected = uring::Sent {
            short: short.collect(),
            unsent_from,
        };
        assert_eq!(sent, expected);
        expect_frames(&mut peers, b"third", |i| good(i) && i < unsent_from);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_push_sends_nothing_twice_and_leaves_nothing_queued() {
        // 16..20 were queued when the push of 20 failed: never taken, so the loop's.
        survives(uring::fault::Fault::Push { at: 20 }, 16);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_enter_completes_what_the_kernel_took_and_drops_the_rest() {
        survives(uring::fault::Fault::Enter { at: 20 }, 20);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_first_enter_leaves_every_socket_to_the_loop() {
        survives(uring::fault::Fault::Enter { at: 0 }, 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_whose_rings_keep_failing_keeps_to_the_loop() {
        let (ours, mut peers) = socket_pairs(40);
        let fds: Vec<i32> = ours.iter().map(AsRawFd::as_raw_fd).collect();
        for _ in 0..4 {
            uring::fault::arm(uring::fault::Fault::Enter { at: 0 });
            assert_eq!(uring::send_to_all(&fds, b"lost").unsent_from, 0);
        }
        // No ring left to make: io_uring reaches no socket, the loop reaches all.
        assert_eq!(uring::send_to_all(&fds, b"lost").unsent_from, 0);
        expect_frames(&mut peers, b"", |_| false);
        assert_eq!(uring::send_then_loop(&fds, b"frame"), vec![]);
        expect_frames(&mut peers, b"frame", |_| true);
    }
}
