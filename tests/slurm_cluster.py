"""A real single-node SLURM cluster for tests: Debian's munged, slurmctld and slurmd in a temporary folder.

slurmd runs configless (it fetches slurm.conf from slurmctld), because the executor plugin's job steps
drop SLURM_CONF; munged therefore listens on its default socket, /run/munge/munge.socket.2.

The node offers two GPUs as generic resources backed by placeholder character devices, so jobs that
ask for GPUs (sbatch --gpus=N) are scheduled and see SLURM's GPU variables; nothing runs on them.
Daemons are stopped by their pid files. Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol")
PARTITION = "gpu"  # the name profiles/slurm/config.yaml asks for


def missing_tools() -> list[str]:
    return [tool for tool in DAEMONS if not Path(tool).exists()] + [tool for tool in CLIENTS if not shutil.which(tool)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    munge: Path
    env: dict[str, str]

    def run(self, *command: str, timeout: int = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(command), env=self.env, capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        for path in (self.root / "slurmd.pid", self.root / "slurmctld.pid", self.munge / "munged.pid"):
            if path.exists():
                try:
                    os.kill(int(path.read_text().strip()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        deadline = time.time() + 15
        for path in (self.root / "slurmd.pid", self.root / "slurmctld.pid", self.munge / "munged.pid"):
            while path.exists() and time.time() < deadline:
                try:
                    os.kill(int(path.read_text().strip()), 0)
                except (ProcessLookupError, ValueError):
                    break
                time.sleep(0.2)
        shutil.rmtree(self.munge, ignore_errors=True)
        cache = Path("/run/slurm/conf")  # slurmd's link to its configuration cache in our folder
        if cache.is_symlink() and str(os.readlink(cache)).startswith(str(self.root)):
            cache.unlink()


def start_cluster(root: Path, timeout: float = 60) -> Cluster:
    """Start munged, slurmctld and slurmd; return once the node is idle (or raise after `timeout` s)."""
    import pwd

    root.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    munge_user = pwd.getpwnam("munge")
    # munged runs as the munge user, which cannot enter pytest's private temporary folders. Its socket
    # is at the default path: a configless slurmd has to reach munge before it has any configuration.
    munge = Path(tempfile.mkdtemp(prefix="test-munge-"))
    munge.chmod(0o755)
    socket_dir = Path("/run/munge")
    socket_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chown(socket_dir, munge_user.pw_uid, munge_user.pw_gid)
    (munge / "munge.key").write_bytes(os.urandom(1024))
    os.chmod(munge / "munge.key", 0o400)
    for path in (munge, munge / "munge.key"):
        os.chown(path, munge_user.pw_uid, munge_user.pw_gid)
    for folder in ("state", "spool", "log"):
        (root / folder).mkdir()
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 2048
    conf = root / "slurm.conf"
    ctld_port = _free_port()
    conf.write_text("\n".join([
        "ClusterName=test", f"SlurmctldHost={host}", "SlurmUser=root",
        "AuthType=auth/munge", "CredType=cred/munge",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory", "DefMemPerCPU=1000", "MinJobAge=3600", "GresTypes=gpu",
        "ReturnToService=2", "SlurmctldParameters=enable_configless", "SchedulerParameters=sched_interval=2", f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool", f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log", f"SlurmdLogFile={root}/log/slurmd.log",
        f"SlurmctldPort={ctld_port}", f"SlurmdPort={_free_port()}",
        f"NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb} Gres=gpu:2 State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
    # Two placeholder devices stand in for GPUs: SLURM counts and assigns them; nothing opens them.
    (root / "gres.conf").write_text(f"AutoDetect=off\nNodeName={host} Name=gpu File=/dev/tty[1-2]\n")
    env = os.environ | {"SLURM_CONF": str(conf)}
    cluster = Cluster(root, munge, env)
    try:
        subprocess.run(["runuser", "-u", "munge", "--", DAEMONS[0], f"--key-file={munge}/munge.key",
                        f"--socket={socket_dir}/munge.socket.2", f"--pid-file={munge}/munged.pid",
                        f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed"],
                       check=True, timeout=30, capture_output=True, text=True)
        subprocess.run([DAEMONS[1], "-i", "-f", str(conf)], env=env, check=True, timeout=30, capture_output=True)
        # Configless slurmd: it fetches the configuration from slurmctld and caches it where client commands
        # look when SLURM_CONF is unset, as it is inside the plugin's job steps (srun).
        subprocess.run([DAEMONS[2], "--conf-server", f"{host}:{ctld_port}"], env=env, check=True, timeout=30,
                       capture_output=True, text=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = cluster.run("sinfo", "-h", "-o", "%T").stdout.strip()
            if state == "idle":
                return cluster
            time.sleep(0.5)
        raise RuntimeError(f"SLURM node not idle after {timeout} s (state {state!r}); see {root}/log")
    except subprocess.CalledProcessError as error:
        cluster.stop()
        raise RuntimeError(f"{error.cmd[0]} failed: {error.stderr}") from error
    except BaseException:
        cluster.stop()
        raise
