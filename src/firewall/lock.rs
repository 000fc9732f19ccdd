//! One firewall run at a time: an exclusive `flock` on `/run/ecs-bootstrap/firewall.lock`
//! (under `--root`). iptables' own `-w` lock only covers a single command (and the nft backend
//! takes none); our check-then-insert spans several commands, so without this lock twenty
//! concurrent runs could each see "absent" and insert twenty rules. The lock lives in /run
//! (tmpfs), so it never outlives a boot, and the kernel drops it when the process dies.

use crate::sys::{Deadline, POLL};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::time::{Duration, Instant};

/// The lock file, relative to the root.
pub const LOCK_FILE: &str = "/run/ecs-bootstrap/firewall.lock";

/// Held until dropped.
#[derive(Debug)]
pub(crate) struct FirewallLock {
    _flock: Flock<File>,
}

/// Takes the lock, waiting at most `patience`, and never past the deadline or once it is
/// stopped (then the error's source is the [`Stopped`], and nothing was changed). The error
/// names the path and what to do.
pub(crate) fn acquire(
    path: &Path,
    patience: Duration,
    deadline: &Deadline,
) -> anyhow::Result<FirewallLock> {
    if let Some(dir) = path.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| anyhow::anyhow!("cannot create the lock folder {}: {e}", dir.display()))?;
    }
    let start = Instant::now();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot open the lock file {}: {e}", path.display()))?;
    // Bounded: at most patience / POLL attempts.
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => {
                return Ok(FirewallLock { _flock: flock });
            }
            Err((f, Errno::EWOULDBLOCK)) | Err((f, Errno::EINTR)) => {
                if let Err(why) = deadline.check() {
                    return Err(anyhow::Error::new(why).context(format!(
                        "gave up waiting for the firewall lock {}, which another ecs-bootstrap firewall run holds (no rule was changed; find it with `fuser {}`)",
                        path.display(),
                        path.display()
                    )));
                }
                if start.elapsed() >= patience {
                    anyhow::bail!(
                        "another ecs-bootstrap firewall run has held {} for more than {:?}; find it with `fuser {}` and let it finish or stop it",
                        path.display(),
                        patience,
                        path.display()
                    );
                }
                file = f;
                std::thread::sleep(POLL.min(deadline.left()));
            }
            Err((_, e)) => anyhow::bail!("cannot lock {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::Stopped;

    #[test]
    fn second_taker_waits_then_gives_up() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run/ecs-bootstrap/firewall.lock");
        let far = Deadline::after(Duration::from_secs(3600));
        let held = acquire(&p, Duration::from_secs(1), &far).unwrap();
        let e = acquire(&p, Duration::from_millis(100), &far).unwrap_err();
        assert!(e.to_string().contains("held"), "{e}");
        // The deadline cuts the wait short, and says so.
        let t = Instant::now();
        let soon = Deadline::after(Duration::from_millis(100));
        let e = acquire(&p, Duration::from_secs(30), &soon).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(
            e.downcast_ref::<Stopped>(),
            Some(&Stopped::Deadline),
            "{e:#}"
        );
        // So does a stop.
        let stopped = Deadline::after(Duration::from_secs(3600));
        stopped.stop();
        let e = acquire(&p, Duration::from_secs(30), &stopped).unwrap_err();
        assert_eq!(
            e.downcast_ref::<Stopped>(),
            Some(&Stopped::Interrupted),
            "{e:#}"
        );
        drop(held);
        acquire(&p, Duration::from_millis(100), &far).unwrap();
    }
}
