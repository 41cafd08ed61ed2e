//! One frame to many sockets in one call: the paced fan-out path.
//!
//! The caller hands over only sockets whose transport has nothing queued, so writing here
//! first cannot reorder anything; whatever the kernel does not take is returned to the
//! caller, who hands it to the transport.

/// Sends `data` to each socket without blocking. Returns `(index, sent)` for each socket the
/// kernel did not take all of `data` for: `sent` bytes went out, or minus the errno. In the
/// common case every send completes and nothing is returned.
pub fn send_to_all(fds: &[i32], data: &[u8]) -> Vec<(usize, isize)> {
    fds.iter()
        .enumerate()
        .filter_map(|(i, &fd)| {
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
                Some((i, -(errno as isize)))
            } else if (sent as usize) < data.len() {
                Some((i, sent))
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::io::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn sends_to_every_socket_and_reports_errors() {
        let (a, mut a_peer) = UnixStream::pair().unwrap();
        let (b, mut b_peer) = UnixStream::pair().unwrap();
        let results = send_to_all(&[a.as_raw_fd(), b.as_raw_fd(), -1], b"frame");
        assert_eq!(results, vec![(2, -(libc::EBADF as isize))]);
        let mut buf = [0u8; 5];
        a_peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"frame");
        b_peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"frame");
    }
}
